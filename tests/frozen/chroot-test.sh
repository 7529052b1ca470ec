#!/usr/bin/env bash
# `make dist-chroot-test`: the frozen check (tests/frozen/check.sh) inside a
# minimal Debian without Python, to prove that a host needs nothing but the
# archive: bullseye (glibc 2.31, the oldest Debian on the mirror) and bookworm.
# Needs root (debootstrap, chroot).
#
#   SUITE=bullseye tests/frozen/chroot-test.sh dist/mlbackend-VERSION-linux-x86_64.tar.gz
#
# The minbase root of SUITE is made once with debootstrap and kept in
# $MLBACKEND_CACHE (default /var/cache/mlbackend); each run works in a fresh
# copy of it (build/chroot-SUITE), since check.sh installs and uninstalls the
# program as root there (install.sh --systemd, uninstall.sh --purge). The
# suite defaults to this machine's (VERSION_CODENAME in /etc/os-release); set
# MIRROR to change the mirror.
set -euo pipefail
cd "$(dirname "$0")/../.."
archive=$1
PYTHON=${PYTHON:-.venv/bin/python}
name=$(basename "$archive" .tar.gz)
suite=${SUITE:-$(. /etc/os-release && echo "$VERSION_CODENAME")}
mirror=${MIRROR:-http://deb.debian.org/debian}
cache=${MLBACKEND_CACHE:-/var/cache/mlbackend}/test-root-$suite-$(uname -m)
root=build/chroot-$suite

[ "$(id -u)" = 0 ] || { echo "chroot-test.sh: needs root (debootstrap, chroot)" >&2; exit 1; }
if ! command -v debootstrap >/dev/null; then
    apt-get update && apt-get install -y debootstrap
fi
if [ ! -e "$cache/.minbase-done" ]; then
    rm -rf "$cache"
    mkdir -p "$(dirname "$cache")"
    debootstrap --variant=minbase "$suite" "$cache" "$mirror" >"$cache.log" 2>&1 \
        || { tail -n 20 "$cache.log" >&2; exit 1; }
    touch "$cache/.minbase-done"
fi
! mountpoint -q "$root/proc" || umount "$root/proc"
rm -rf "$root"
mkdir -p build
cp -a "$cache" "$root"
if chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        sh -c 'command -v python3 || command -v python'; then
    echo "chroot-test.sh: $root has a Python; the check would prove nothing" >&2
    exit 1
fi

(cd "$(dirname "$archive")" && sha256sum --check --quiet "$name.tar.gz.sha256")
job=$root/root/mlbackend-check
rm -rf "$job"
mkdir -p "$job/home"
cp "$archive" tests/frozen/check.sh "$job/"
"$PYTHON" tests/frozen/make_data.py "$job/data"

mountpoint -q "$root/proc" || { mount -t proc proc "$root/proc"; trap 'umount "$root/proc"' EXIT; }
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root/mlbackend-check/home \
    MLBACKEND_CHECK_INSTALL=system /bin/bash -c "
        set -e
        cd /root/mlbackend-check
        tar -xzf $name.tar.gz
        bash check.sh $name data"
