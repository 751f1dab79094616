#!/bin/bash
# Prints the release name VERSION-HASH for the bundle at $1: the app's version from pyproject.toml
# and a hash of everything that goes into the wheelhouse, so a changed source is a new release
# and an unchanged one is the same release (the second run installs nothing).
set -euo pipefail
cd "$1"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)
[ -n "$version" ] || { echo "no version in $1/pyproject.toml" >&2; exit 1; }
hash=$({ find app -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0
         printf '%s\0' pyproject.toml README.md requirements/app.lock; } |
       LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-10)
echo "$version-$hash"
