#!/usr/bin/env bash
# promtool, amtool (and the prometheus binary with its console libraries, for rendering the console
# template in a test) taken from Debian 12's packages `prometheus` and `prometheus-alertmanager`,
# without installing them: no daemon starts, no user or unit is created on this machine.
#
#   tests/monitoring/tools.sh        -> .tools/bin/{promtool,amtool,prometheus}
#                                       .tools/console_libraries/{prom,menu}.lib
#
# The .debs are kept in .tools/debs/ (gitignored); a second run with everything in place does
# nothing. `apt-get download` needs the package lists: on a fresh machine (none yet) it runs
# `apt-get update` once (as root) and tries again. TOOLS_DIR overrides .tools.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="${TOOLS_DIR:-$ROOT/.tools}"
BIN="$TOOLS/bin"
DEBS="$TOOLS/debs"
LIBS="$TOOLS/console_libraries"
PACKAGES=(prometheus prometheus-alertmanager)

have_all() {
	[ -x "$BIN/promtool" ] && [ -x "$BIN/amtool" ] && [ -x "$BIN/prometheus" ] &&
		[ -f "$LIBS/prom.lib" ] && [ -f "$LIBS/menu.lib" ]
}

if have_all; then
	exit 0
fi

mkdir -p "$BIN" "$DEBS" "$LIBS"

# Download into DEBS; as root apt would drop to the _apt user, who cannot write here.
download() {
	(cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "${PACKAGES[@]}")
}

deb_of() { # the newest .deb of package $1 in DEBS
	find "$DEBS" -maxdepth 1 -name "$1_*.deb" | sort -V | tail -n 1
}

if [ -z "$(deb_of prometheus)" ] || [ -z "$(deb_of prometheus-alertmanager)" ]; then
	if ! download; then
		echo "tools.sh: apt-get download failed; running apt-get update and trying again" >&2
		if [ "$(id -u)" != 0 ]; then
			echo "tools.sh: apt-get update needs root (or run it once yourself)" >&2
			exit 1
		fi
		apt-get update -q
		download
	fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for package in "${PACKAGES[@]}"; do
	deb="$(deb_of "$package")"
	[ -n "$deb" ] || { echo "tools.sh: no .deb of $package in $DEBS" >&2; exit 1; }
	dpkg-deb -x "$deb" "$work/$package"
done

install -m 0755 "$work/prometheus/usr/bin/promtool" "$work/prometheus/usr/bin/prometheus" "$BIN/"
install -m 0755 "$work/prometheus-alertmanager/usr/bin/amtool" "$BIN/"
# Debian ships the console libraries as examples only (/etc/prometheus/console_libraries holds a
# README): the deployed Prometheus needs them copied there, as here.
install -m 0644 "$work"/prometheus/usr/share/doc/prometheus/examples/console_libraries/*.lib "$LIBS/"

have_all
echo "tools.sh: $("$BIN/promtool" --version 2>&1 | head -n 1); $("$BIN/amtool" --version 2>&1 | head -n 1)"
