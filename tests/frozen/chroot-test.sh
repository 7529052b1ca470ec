#!/usr/bin/env bash
# `make dist-chroot-test`: the frozen check (tests/frozen/check.sh) inside a
# minimal Debian without Python, to prove that a host needs nothing but the
# archive: bullseye (glibc 2.31, the oldest Debian on the mirror) and bookworm.
# Needs root (debootstrap, chroot).
#
#   SUITE=bullseye tests/frozen/chroot-test.sh dist/mlbackend-VERSION-linux-ARCH.tar.gz
#
# The minbase root of SUITE for the archive's machine (tests/frozen/test-root.sh)
# is made once and kept in $MLBACKEND_CACHE (default /var/cache/mlbackend);
# each run works in a fresh copy of it (build/chroot-SUITE-ARCH), since
# check.sh installs and uninstalls the program as root there (install.sh
# --systemd, uninstall.sh --purge). An aarch64 root on an x86-64 machine runs
# wholly under qemu-user (binfmt_misc), its shell and tools included. The
# suite defaults to this machine's (VERSION_CODENAME in /etc/os-release); set
# MIRROR to change the mirror.
set -euo pipefail
cd "$(dirname "$0")/../.."
archive=$1
PYTHON=${PYTHON:-.venv/bin/python}
name=$(basename "$archive" .tar.gz)
arch=${name##*-}
suite=${SUITE:-$(. /etc/os-release && echo "$VERSION_CODENAME")}
root=build/chroot-$suite-$arch

[ "$(id -u)" = 0 ] || { echo "chroot-test.sh: needs root (debootstrap, chroot)" >&2; exit 1; }
cache=$(bash tests/frozen/test-root.sh "$suite" "$arch")
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
