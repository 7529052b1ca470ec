#!/usr/bin/env bash
# `make dist-chroot-test`: the frozen check (tests/frozen/check.sh) inside a
# minimal Debian without Python, to prove that a host needs nothing but the
# archive. Needs root. Not part of CI (it takes a few minutes):
#
#   apt-get update && apt-get install -y debootstrap
#   debootstrap --variant=minbase bookworm build/chroot-bookworm   # done once, then reused
#   then: unpack the archive in it, chroot, run check.sh there (including
#   install.sh --systemd and uninstall.sh --purge, as root in the chroot)
#
#   tests/frozen/chroot-test.sh dist/mlbackend-VERSION-linux-x86_64.tar.gz
# The suite is this machine's (VERSION_CODENAME in /etc/os-release); set SUITE,
# MIRROR or CHROOT to change it, the mirror or the directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
archive=$1
PYTHON=${PYTHON:-.venv/bin/python}
name=$(basename "$archive" .tar.gz)
suite=${SUITE:-$(. /etc/os-release && echo "$VERSION_CODENAME")}
mirror=${MIRROR:-http://deb.debian.org/debian}
root=${CHROOT:-build/chroot-$suite}

[ "$(id -u)" = 0 ] || { echo "chroot-test.sh: needs root (debootstrap, chroot)" >&2; exit 1; }
if ! command -v debootstrap >/dev/null; then
    apt-get update && apt-get install -y debootstrap
fi
if [ ! -e "$root/.minbase-done" ]; then
    rm -rf "$root"
    debootstrap --variant=minbase "$suite" "$root" "$mirror"
    touch "$root/.minbase-done"
fi
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
