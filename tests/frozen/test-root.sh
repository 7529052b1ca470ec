#!/usr/bin/env bash
# A minimal Debian root without Python for the frozen checks, made once with
# debootstrap and kept in $MLBACKEND_CACHE (default /var/cache/mlbackend);
# prints its path. Used as a chroot (chroot-test.sh) and, for another
# machine's archive, as the emulator's library root (dist-test.sh). Needs root.
#
#   tests/frozen/test-root.sh SUITE [ARCH]      (ARCH: default uname -m)
#
# Set MIRROR to change the mirror. Another machine's root is made and run
# under qemu-user (packaging/emulation.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
suite=${1:?usage: test-root.sh SUITE [ARCH]}
arch=${2:-$(uname -m)}
mirror=${MIRROR:-http://deb.debian.org/debian}
cache=${MLBACKEND_CACHE:-/var/cache/mlbackend}/test-root-$suite-$arch
case $arch in x86_64) debarch=amd64 ;; aarch64) debarch=arm64 ;; *) echo "test-root.sh: no root for $arch" >&2; exit 1 ;; esac

[ "$(id -u)" = 0 ] || { echo "test-root.sh: needs root (debootstrap)" >&2; exit 1; }
[ "$arch" = "$(uname -m)" ] || bash packaging/emulation.sh "$arch"
if ! command -v debootstrap >/dev/null; then
    { apt-get update -q && apt-get install -y -q debootstrap; } >&2
fi
mkdir -p "$(dirname "$cache")"
exec 8>"$cache.lock"
flock 8
if [ ! -e "$cache/.minbase-done" ]; then
    echo "test-root.sh: debootstrap $suite ($debarch) into $cache" >&2
    rm -rf "$cache"
    debootstrap --variant=minbase --arch="$debarch" "$suite" "$cache" "$mirror" >"$cache.log" 2>&1 \
        || { tail -n 20 "$cache.log" >&2; exit 1; }
    touch "$cache/.minbase-done"
fi
echo "$cache"
