#!/bin/bash
# Builds the wheelhouse of one release on the controller, for the hosts' interpreter:
#   build_wheelhouse.sh SOURCE_DIR OUT.tar.gz PYTHON_VERSION MACHINE GLIBC_VERSION [PYTHON]
# It holds the app's own wheel, every dependency pinned in requirements/app.lock as a binary
# wheel for CPython PYTHON_VERSION on MACHINE/glibc, and the lock itself (hosts install with
# --require-hashes from it). Markers are stripped from the lock before downloading: the
# controller's Python (3.11.7) would skip async-timeout (python_full_version < '3.11.3') that the
# hosts' Python (3.11.2) needs; the hosts evaluate the markers when they install.
set -euo pipefail
src=$1 out=$2 pyver=$3 machine=$4 glibc=$5 python=${6:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/wheelhouse" "$work/src"

sed -E 's/ ;[^\\]*\\$/ \\/' "$src/requirements/app.lock" >"$work/unmarked.lock"
platforms=(--platform "manylinux1_$machine" --platform "manylinux2010_$machine" --platform "manylinux2014_$machine")
for minor in $(seq 5 "${glibc#2.}"); do platforms+=(--platform "manylinux_2_${minor}_$machine"); done
abi="cp$(echo "$pyver" | cut -d. -f1,2 | tr -d .)"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
  --only-binary=:all: --implementation cp --python-version "$pyver" \
  --abi "$abi" --abi abi3 --abi none "${platforms[@]}" \
  -r "$work/unmarked.lock" -d "$work/wheelhouse"

# The app's wheel, built from a copy so the source tree stays untouched.
cp -r "$src/app" "$src/pyproject.toml" "$src/README.md" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
"$python" -m pip wheel --quiet --disable-pip-version-check --no-deps "$work/src" -w "$work/wheelhouse"
cp "$src/requirements/app.lock" "$work/wheelhouse/app.lock"

mkdir -p "$(dirname "$out")"
tar -C "$work" -czf "$out.tmp" wheelhouse
mv "$out.tmp" "$out"
