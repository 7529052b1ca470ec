#!/usr/bin/env bash
# The build root of the release: a Debian bullseye (glibc 2.31) root with
# CPython 3.11 and OpenSSL 3 built from Debian's own sources, and a virtual
# environment holding the pinned requirements and PyInstaller. make dist
# (packaging/build-dist.sh) freezes the program inside it, so that every ELF
# file of the bundle needs glibc 2.28 at most. Why and how: packaging/BUILD-ROOT.md.
#
#   packaging/build-root.sh              prints the root's path when it is ready
#   packaging/build-root.sh CMD ARG...   then runs CMD in it (env -i, /proc mounted)
#
# Every stage is cached under $MLBACKEND_CACHE (default /var/cache/mlbackend)
# and made again only when what it is made from changes (a stamp file holds a
# hash of its inputs): from scratch about 35 minutes on two busy cores, then
# seconds. Needs root
# (debootstrap, chroot). ARCH is the machine (uname -m); only the build
# machine's own is built for now.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD

ARCH=${ARCH:-$(uname -m)}
SUITE=bullseye                     # glibc 2.31, the oldest Debian on the mirror
SOURCE_SUITE=bookworm              # where CPython 3.11 and OpenSSL 3 sources come from
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CACHE=${MLBACKEND_CACHE:-/var/cache/mlbackend}
PREFIX=/opt/python                 # CPython and OpenSSL inside the root
VENV=/opt/venv                     # the build environment inside the root
JOBS=${JOBS:-2}
PIP_VERSION=25.0.1                 # the pip that fills the build environment

case $ARCH in
    x86_64) debarch=amd64 ;;
    aarch64) debarch=arm64 ;;
    *) echo "build-root.sh: no build root for $ARCH" >&2; exit 1 ;;
esac
[ "$ARCH" = "$(uname -m)" ] || { echo "build-root.sh: builds for this machine's $(uname -m) only, not $ARCH" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "build-root.sh: needs root (debootstrap, chroot); try sudo make dist" >&2; exit 1; }

root=$CACHE/build-root-$SUITE-$ARCH
mkdir -p "$CACHE"
log=$CACHE/build-root-$SUITE-$ARCH.log
say() { echo "build-root: $*" >&2; }

# in_root CMD...: run in the root with a clean environment (no PIP_* or
# proxy settings of the host), /proc mounted for the duration.
in_root() {
    local mounted=
    if ! mountpoint -q "$root/proc"; then
        mount -t proc proc "$root/proc"
        mounted=1
    fi
    local rc=0
    chroot "$root" /usr/bin/env -i PATH=$PREFIX/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C.UTF-8 "$@" || rc=$?
    [ -z "$mounted" ] || umount "$root/proc"
    return $rc
}

# stage NAME INPUT...: true when the stage must be made (its stamp is missing
# or holds another hash of the inputs: file contents and strings).
stamp_of() { local f; for f in "$@"; do if [ -f "$f" ]; then cat "$f"; else echo "$f"; fi; done | sha256sum | cut -c1-16; }
needs() {
    local name=$1; shift
    [ "$(cat "$root/.stage-$name" 2>/dev/null)" != "$(stamp_of "$@")" ]
}
done_stage() {
    local name=$1; shift
    stamp_of "$@" > "$root/.stage-$name"
}

# 1. The root: minbase and the compilers, from the mirror apt uses.
packages=build-essential,dpkg-dev,perl,pkg-config,ca-certificates,libffi-dev,zlib1g-dev,libbz2-dev,liblzma-dev,libsqlite3-dev,uuid-dev,binutils,patchelf
if needs root "$SUITE" "$packages" "$MIRROR"; then
    say "debootstrap $SUITE ($debarch) into $root, log in $log"
    mountpoint -q "$root/proc" && umount "$root/proc"
    rm -rf "$root"
    command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; } >>"$log" 2>&1
    debootstrap --variant=minbase --arch="$debarch" --include="$packages" \
        "$SUITE" "$root" "$MIRROR" >>"$log" 2>&1
    # Sources of the newer suite, signed with the keys this machine trusts.
    install -D -m 644 /usr/share/keyrings/debian-archive-keyring.gpg "$root/etc/apt/keyrings/debian.gpg"
    cat > "$root/etc/apt/sources.list.d/sources.list" <<EOF
deb-src [signed-by=/etc/apt/keyrings/debian.gpg] $MIRROR $SOURCE_SUITE main
deb-src [signed-by=/etc/apt/keyrings/debian.gpg] $SECURITY_MIRROR $SOURCE_SUITE-security main
EOF
    done_stage root "$SUITE" "$packages" "$MIRROR"
fi

# 2. OpenSSL 3 and CPython 3.11, Debian's sources with Debian's patches
#    (security fixes included), built into $PREFIX. Made again when
#    build-python.sh or glibc-compat.h changes; to take a new Debian source
#    version (a security fix), remove $root/.stage-python. Debian's own
#    builds are not used: bullseye has neither, and bookworm's need glibc 2.34+.
if needs python "$SOURCE_SUITE" "$PREFIX" packaging/build-python.sh packaging/glibc-compat.h; then
    say "building OpenSSL 3 and CPython 3.11 from $SOURCE_SUITE's sources (half an hour on two busy cores), log in $log"
    install -m 644 packaging/glibc-compat.h "$root/usr/local/include/glibc-compat.h"
    install -m 755 packaging/build-python.sh "$root/usr/local/bin/build-python.sh"
    in_root env SOURCE_SUITE=$SOURCE_SUITE PREFIX=$PREFIX ARCH=$ARCH JOBS=$JOBS \
        bash /usr/local/bin/build-python.sh >>"$log" 2>&1 \
         || { say "failed; the end of $log:"; tail -n 30 "$log" >&2; exit 1; }
    rm -f "$root/.stage-venv"
    done_stage python "$SOURCE_SUITE" "$PREFIX" packaging/build-python.sh packaging/glibc-compat.h
fi

# 3. The build environment: the runtime pins and the freezing tools of
#    requirements-dev.txt, as wheels for the root's glibc, downloaded on this
#    machine (pip inside the root may not get through this network's TLS
#    proxy) and installed offline.
reqs=$root/opt/requirements-build.txt
{
    cat requirements.txt
    grep -E '^(setuptools|argparse-manpage|pyinstaller|pyinstaller-hooks-contrib|altgraph)==' requirements-dev.txt
    echo "pip==$PIP_VERSION"   # run from its wheel to install the rest
} > "$reqs.new"
if needs venv "$reqs.new" "$ARCH"; then
    say "the build environment in $root$VENV"
    wheels=$root/opt/wheels
    mkdir -p "$wheels"
    # manylinux_2_28 at most, so that no wheel raises the floor.
    platforms=()
    for minor in $(seq 28 -1 17); do platforms+=(--platform "manylinux_2_${minor}_$ARCH"); done
    platforms+=(--platform "manylinux2014_$ARCH")
    host_pip=${HOST_PIP:-$here/.venv/bin/pip}
    # argparse-manpage is published as a source archive only: pure Python,
    # so its wheel is built here (py3-none-any, the same for any machine).
    pure_sdists='^argparse-manpage=='
    grep -vE "$pure_sdists" "$reqs.new" > "$root/opt/requirements-wheels.txt"
    {
        env -u PIP_REQUIRE_VIRTUALENV "$host_pip" --disable-pip-version-check -q download \
            --only-binary=:all: --python-version 3.11 --implementation cp "${platforms[@]}" \
            -d "$wheels" -r "$root/opt/requirements-wheels.txt"
        grep -E "$pure_sdists" "$reqs.new" | env -u PIP_REQUIRE_VIRTUALENV xargs \
            "$host_pip" --disable-pip-version-check -q wheel --no-deps -w "$wheels"
    } >>"$log" 2>&1 || { say "pip download failed; the end of $log:"; tail -n 30 "$log" >&2; exit 1; }
    mv "$reqs.new" "$reqs"
    # pip runs from its wheel (the built Python has none) and fills the venv.
    in_root bash -euxc "
        rm -rf $VENV
        $PREFIX/bin/python3.11 -m venv --without-pip $VENV
        $VENV/bin/python /opt/wheels/pip-$PIP_VERSION-py3-none-any.whl/pip --disable-pip-version-check -q install \
            --no-index --find-links /opt/wheels -r /opt/requirements-build.txt
    " >>"$log" 2>&1 || { say "failed; the end of $log:"; tail -n 30 "$log" >&2; exit 1; }
    done_stage venv "$reqs" "$ARCH"
else
    rm -f "$reqs.new"
fi
if [ $# -gt 0 ]; then
    in_root "$@"
else
    echo "$root"
fi
