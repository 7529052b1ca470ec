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
# seconds. Needs root (debootstrap, chroot).
#
# ARCH is the machine the release is for (default: uname -m). Another
# machine's root (aarch64 on x86-64) runs under qemu-user
# (packaging/emulation.sh); its CPython is cross-compiled at native speed in a
# third root, the cross root (packaging/cross-python.sh).
#
# One build at a time per root: the lock $CACHE/build-ARCH.lock is taken here,
# unless MLBACKEND_LOCKED=ARCH says that the caller holds it (build-dist.sh).
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
BUILD_ARCH=$(uname -m)             # the machine the build runs on

debian_arch() {
    case $1 in
        x86_64) echo amd64 ;;
        aarch64) echo arm64 ;;
        *) echo "build-root.sh: no build root for $1" >&2; return 1 ;;
    esac
}
debarch=$(debian_arch "$ARCH")
build_debarch=$(debian_arch "$BUILD_ARCH")
[ "$(id -u)" = 0 ] || { echo "build-root.sh: needs root (debootstrap, chroot); try sudo make dist" >&2; exit 1; }

root=$CACHE/build-root-$SUITE-$ARCH
mkdir -p "$CACHE"
log=$CACHE/build-root-$SUITE-$ARCH.log
say() { echo "build-root: $*" >&2; }
failed() { say "failed; the end of $log:"; tail -n 30 "$log" >&2; exit 1; }
if [ "${MLBACKEND_LOCKED:-}" != "$ARCH" ]; then
    exec 8>"$CACHE/build-$ARCH.lock"
    flock 8
fi
[ "$ARCH" = "$BUILD_ARCH" ] || bash packaging/emulation.sh "$ARCH"

# in_chroot DIR CMD...: run in the root DIR with a clean environment (no PIP_*
# or proxy settings of the host), /proc mounted for the duration.
in_chroot() {
    local dir=$1 mounted=
    shift
    if ! mountpoint -q "$dir/proc"; then
        mount -t proc proc "$dir/proc"
        mounted=1
    fi
    local rc=0
    chroot "$dir" /usr/bin/env -i PATH=$PREFIX/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C.UTF-8 "$@" || rc=$?
    [ -z "$mounted" ] || umount "$dir/proc"
    return $rc
}
in_root() { in_chroot "$root" "$@"; }

# needs DIR NAME INPUT...: true when the stage NAME of the root DIR must be
# made (its stamp is missing or holds another hash of the inputs: file
# contents and strings); done_stage DIR NAME INPUT... writes the stamp.
stamp_of() { local f; for f in "$@"; do if [ -f "$f" ]; then cat "$f"; else echo "$f"; fi; done | sha256sum | cut -c1-16; }
needs() {
    local dir=$1 name=$2
    shift 2
    [ "$(cat "$dir/.stage-$name" 2>/dev/null)" != "$(stamp_of "$@")" ]
}
done_stage() {
    local dir=$1 name=$2
    shift 2
    stamp_of "$@" > "$dir/.stage-$name"
}

# debootstrap_root DIR DEBARCH PACKAGES: Debian minbase of SUITE with
# PACKAGES, from the mirror apt uses, and the deb-src lines of SOURCE_SUITE.
debootstrap_root() {
    local dir=$1 arch=$2 include=$3
    say "debootstrap $SUITE ($arch) into $dir, log in $log"
    ! mountpoint -q "$dir/proc" || umount "$dir/proc"
    rm -rf "$dir"
    debootstrap --variant=minbase --arch="$arch" --include="$include" \
        "$SUITE" "$dir" "$MIRROR" >>"$log" 2>&1 || failed
    # Sources of the newer suite, signed with the keys this machine trusts.
    install -D -m 644 /usr/share/keyrings/debian-archive-keyring.gpg "$dir/etc/apt/keyrings/debian.gpg"
    cat > "$dir/etc/apt/sources.list.d/sources.list" <<EOF
deb-src [signed-by=/etc/apt/keyrings/debian.gpg] $MIRROR $SOURCE_SUITE main
deb-src [signed-by=/etc/apt/keyrings/debian.gpg] $SECURITY_MIRROR $SOURCE_SUITE-security main
EOF
}

command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; } >>"$log" 2>&1

# 1. The root: minbase and the compilers, from the mirror apt uses. Another
#    machine's root runs emulated and nothing is compiled in it: it gets the
#    libraries that the cross-compiled Python's modules load, and binutils
#    (PyInstaller, strip).
if [ "$ARCH" = "$BUILD_ARCH" ]; then
    packages=build-essential,dpkg-dev,perl,pkg-config,ca-certificates,libffi-dev,zlib1g-dev,libbz2-dev,liblzma-dev,libsqlite3-dev,uuid-dev,binutils,patchelf
else
    packages=ca-certificates,libffi7,zlib1g,libbz2-1.0,liblzma5,libsqlite3-0,libuuid1,binutils
fi
# Another machine's root is made (emulated, minutes) beside the cross root
# and the cross build (2'), which do not need it; its Python is then made
# again, as the root is made anew.
root_pid=
if needs "$root" root "$SUITE" "$packages" "$MIRROR"; then
    if [ "$ARCH" = "$BUILD_ARCH" ]; then
        debootstrap_root "$root" "$debarch" "$packages"
        done_stage "$root" root "$SUITE" "$packages" "$MIRROR"
    else
        rm -f "$root/.stage-python"   # before 2' looks at it: the root is made anew
        { debootstrap_root "$root" "$debarch" "$packages" && done_stage "$root" root "$SUITE" "$packages" "$MIRROR"; } &
        root_pid=$!
    fi
fi
root_ready() {
    [ -z "$root_pid" ] || wait "$root_pid" || { say "the $ARCH root could not be made"; exit 1; }
    root_pid=
}

# 2. OpenSSL 3 and CPython 3.11, Debian's sources with Debian's patches
#    (security fixes included), built into $PREFIX. Made again when
#    build-python.sh or glibc-compat.h changes; to take a new Debian source
#    version (a security fix), remove $root/.stage-python. Debian's own
#    builds are not used: bullseye has neither, and bookworm's need glibc 2.34+.
if [ "$ARCH" = "$BUILD_ARCH" ] &&
        needs "$root" python "$SOURCE_SUITE" "$PREFIX" packaging/build-python.sh packaging/glibc-compat.h; then
    say "building OpenSSL 3 and CPython 3.11 from $SOURCE_SUITE's sources (half an hour on two busy cores), log in $log"
    install -m 644 packaging/glibc-compat.h "$root/usr/local/include/glibc-compat.h"
    install -m 755 packaging/build-python.sh "$root/usr/local/bin/build-python.sh"
    in_root env SOURCE_SUITE=$SOURCE_SUITE PREFIX=$PREFIX ARCH=$ARCH JOBS=$JOBS \
        bash /usr/local/bin/build-python.sh >>"$log" 2>&1 || failed
    rm -f "$root/.stage-venv"
    done_stage "$root" python "$SOURCE_SUITE" "$PREFIX" packaging/build-python.sh packaging/glibc-compat.h
fi

# 2'. For another machine, the same sources cross-compiled at native speed in
#    the cross root: this machine's bullseye with Debian's cross toolchain and
#    ARCH's -dev packages (multiarch). cross-python.sh builds the CPython that
#    a cross build of CPython runs from the same sources first. The result is
#    copied into ARCH's root and checked there (emulated).
if [ "$ARCH" != "$BUILD_ARCH" ]; then
    cross=$CACHE/cross-root-$SUITE-$BUILD_ARCH-$ARCH
    cross_log=$cross.log
    cross_packages="crossbuild-essential-$debarch"
    for p in libffi-dev zlib1g-dev libbz2-dev liblzma-dev libsqlite3-dev uuid-dev; do
        cross_packages+=" $p:$debarch"
    done
    if needs "$cross" root "$SUITE" "$MIRROR" "$debarch" "$cross_packages"; then
        log=$cross_log debootstrap_root "$cross" "$build_debarch" build-essential,dpkg-dev,perl,pkg-config,ca-certificates
        in_chroot "$cross" sh -euxc "
            dpkg --add-architecture $debarch
            apt-get update -q
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $cross_packages
        " >>"$cross_log" 2>&1 || log=$cross_log failed
        done_stage "$cross" root "$SUITE" "$MIRROR" "$debarch" "$cross_packages"
    fi
    if needs "$root" python "$SOURCE_SUITE" "$PREFIX" packaging/cross-python.sh packaging/glibc-compat.h; then
        say "cross-compiling OpenSSL 3 and CPython 3.11 for $ARCH from $SOURCE_SUITE's sources, log in $cross_log"
        install -D -m 644 packaging/glibc-compat.h "$cross/usr/local/include/glibc-compat.h"
        install -D -m 755 packaging/cross-python.sh "$cross/usr/local/bin/cross-python.sh"
        in_chroot "$cross" env SOURCE_SUITE=$SOURCE_SUITE PREFIX=$PREFIX ARCH=$ARCH JOBS=$JOBS \
            HOST_TRIPLET="$ARCH-linux-gnu" DESTDIR=/opt/cross-$ARCH \
            bash /usr/local/bin/cross-python.sh >>"$cross_log" 2>&1 || log=$cross_log failed
        root_ready
        rm -rf "${root:?}$PREFIX"
        cp -a "$cross/opt/cross-$ARCH$PREFIX" "$root$PREFIX"
        rm -rf "$cross/opt/cross-$ARCH"
        # Every extension module of the standard library loads, on ARCH.
        in_root "$PREFIX/bin/python3.11" -c 'import pyexpat, _elementtree, _ssl, _hashlib, _ctypes, _lzma, _bz2, zlib, _sqlite3, _uuid, _decimal, _multiprocessing' \
            >>"$log" 2>&1 || failed
        rm -f "$root/.stage-venv"
        done_stage "$root" python "$SOURCE_SUITE" "$PREFIX" packaging/cross-python.sh packaging/glibc-compat.h
    fi
fi
root_ready

# 3. The build environment: the runtime pins (their markers evaluated for
#    ARCH: packaging/pins.py) and the freezing tools of requirements-dev.txt,
#    as wheels for the root's glibc and machine, downloaded on this machine
#    (pip inside the root may not get through this network's TLS proxy) and
#    installed offline.
reqs=$root/opt/requirements-build.txt
host_pip=${HOST_PIP:-$here/.venv/bin/pip}
{
    "$(dirname "$host_pip")/python" packaging/pins.py "$ARCH" requirements.txt
    grep -E '^(setuptools|argparse-manpage|pyinstaller|pyinstaller-hooks-contrib|altgraph)==' requirements-dev.txt
    echo "pip==$PIP_VERSION"   # run from its wheel to install the rest
} > "$reqs.new"
if needs "$root" venv "$reqs.new" "$ARCH"; then
    say "the build environment in $root$VENV"
    wheels=$root/opt/wheels
    mkdir -p "$wheels"
    # manylinux_2_28 at most, so that no wheel raises the floor.
    platforms=()
    for minor in $(seq 28 -1 17); do platforms+=(--platform "manylinux_2_${minor}_$ARCH"); done
    platforms+=(--platform "manylinux2014_$ARCH")
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
    } >>"$log" 2>&1 || failed
    mv "$reqs.new" "$reqs"
    # pip runs from its wheel (the built Python has none) and fills the venv.
    in_root bash -euxc "
        rm -rf $VENV
        $PREFIX/bin/python3.11 -m venv --without-pip $VENV
        $VENV/bin/python /opt/wheels/pip-$PIP_VERSION-py3-none-any.whl/pip --disable-pip-version-check -q install \
            --no-index --find-links /opt/wheels -r /opt/requirements-build.txt
    " >>"$log" 2>&1 || failed
    done_stage "$root" venv "$reqs" "$ARCH"
else
    rm -f "$reqs.new"
fi
if [ $# -gt 0 ]; then
    in_root "$@"
else
    echo "$root"
fi
