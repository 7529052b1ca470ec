#!/usr/bin/env bash
# Make this machine run ARCH's Linux programs through qemu-user, as the kernel
# runs its own: the aarch64 release is built in an arm64 Debian root and
# checked on an x86-64 machine (packaging/BUILD-ROOT.md, docs/release.md).
#
#   packaging/emulation.sh aarch64
#
# Installs Debian's qemu-user-static and binfmt-support when missing (the
# static emulator, registered with the F flag: the kernel keeps it open, so it
# also runs programs inside a chroot, where no x86-64 library is), mounts
# binfmt_misc when needed and enables the emulator. Idempotent; needs root.
# Nothing to do for this machine's own architecture.
set -euo pipefail
ARCH=${1:?usage: emulation.sh ARCH}
[ "$ARCH" != "$(uname -m)" ] || exit 0
case $ARCH in aarch64) ;; *) echo "emulation.sh: no emulator set up for $ARCH" >&2; exit 1 ;; esac
[ "$(id -u)" = 0 ] || { echo "emulation.sh: needs root (binfmt_misc)" >&2; exit 1; }
entry=/proc/sys/fs/binfmt_misc/qemu-$ARCH

if ! [ -x "/usr/bin/qemu-$ARCH-static" ] || ! command -v update-binfmts >/dev/null; then
    # qemu-user-static replaces qemu-user-binfmt (whose dynamic emulator cannot
    # run in a chroot); qemu-user keeps the dynamic emulators (make cpu-test).
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        qemu-user qemu-user-static binfmt-support; } >&2
fi
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
grep -qx enabled "$entry" 2>/dev/null || update-binfmts --enable "qemu-$ARCH"
grep -qx enabled "$entry" && grep -q '^flags: .*F' "$entry" \
    || { echo "emulation.sh: $entry is not an enabled emulator with the F flag:" >&2; cat "$entry" >&2; exit 1; }
