#!/usr/bin/env bash
# apt-install.sh WHAT ESTIMATE PACKAGE... installs Debian packages that the
# tests need (make test calls it only for what is missing), without the
# packages they merely recommend (chromium alone would pull ~125, among
# them avahi-daemon, udev, cups helpers and a systemd upgrade; without
# recommends it is ~25 shared libraries), and quietly: apt's output goes
# to a log that is printed only when something fails.
#
#   scripts/apt-install.sh "the browser test" "about 1 min" chromium
set -euo pipefail
what=$1 estimate=$2
shift 2
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
log=$(mktemp /tmp/apt-install.XXXXXX)
export DEBIAN_FRONTEND=noninteractive
pkgs="$*"
fail() {
	echo "apt-install: $1; apt's output:" >&2
	cat "$log" >&2
	echo "apt-install: fix the cause above, or install them by hand: ${SUDO:+$SUDO }apt-get install --no-install-recommends $pkgs" >&2
	exit 1
}
start=$SECONDS
$SUDO apt-get update -q >"$log" 2>&1 || fail "apt-get update failed"
n=$($SUDO apt-get -s install --no-install-recommends "$@" 2>>"$log" | grep -c '^Inst ' || true)
echo "   installing $* for $what: $n Debian packages, $estimate (output in $log)"
$SUDO apt-get install -y -q --no-install-recommends "$@" >>"$log" 2>&1 || fail "apt-get install $pkgs failed"
echo "   installed $* in $((SECONDS - start)) s"
rm -f "$log"
