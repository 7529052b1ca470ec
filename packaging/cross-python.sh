#!/usr/bin/env bash
# Run inside the cross root by packaging/build-root.sh: build-python.sh's
# build (OpenSSL 3 and CPython 3.11 from Debian's source packages of
# SOURCE_SUITE, bound to glibc 2.28 at most by glibc-compat.h) cross-compiled
# for HOST_TRIPLET (aarch64-linux-gnu) with Debian's cross toolchain, at this
# machine's speed: the same build under emulation takes hours. Installed into
# DESTDIR/PREFIX; build-root.sh copies it to PREFIX in the target's root.
#
# A cross build of CPython runs a CPython of the same version on this machine
# (to generate files and to build the extension modules): it is built here
# first, from the same sources, for this machine (a few minutes; it needs no
# OpenSSL). So the aarch64 build depends on no other root and starts at once,
# beside the x86-64 one.
#
# A separate script from build-python.sh, whose text is part of the x86-64
# root's cache stamp: the two are kept in step by hand (the same sources,
# patch and options; here, in addition, what a cross build needs).
set -euxo pipefail
: "${SOURCE_SUITE:?}" "${PREFIX:?}" "${ARCH:?}" "${HOST_TRIPLET:?}" "${DESTDIR:?}" "${JOBS:=2}"
out=$DESTDIR$PREFIX
rm -rf /build "$DESTDIR"
mkdir -p /build
cd /build
apt-get update -q
apt-get source -q "openssl/$SOURCE_SUITE" "python3.11/$SOURCE_SUITE"

# OpenSSL: the libraries and headers only, built with HOST_TRIPLET-gcc.
cd /build/openssl-3*/
./Configure "linux-$ARCH" --cross-compile-prefix="$HOST_TRIPLET-" --prefix="$PREFIX" --libdir=lib \
    --openssldir=/etc/ssl shared no-tests "-Wl,-rpath,$PREFIX/lib"
make -j"$JOBS" build_libs
make install_dev DESTDIR="$DESTDIR"

# CPython: as build-python.sh (see there for sem_clockwait, glibc-compat.h
# and pyexpat.c). A cross build cannot run test programs, so configure is
# told what they would find on any Linux: /dev/ptmx and a working
# getaddrinfo, no /dev/ptc. pkg-config looks at HOST_TRIPLET's libraries only.
cd /build/python3.11-*/
if grep -q '^#include "pycore_' Modules/pyexpat.c && ! grep -q Py_BUILD_CORE_MODULE Modules/pyexpat.c; then
    sed -i '1i #ifndef Py_BUILD_CORE_BUILTIN\n#  define Py_BUILD_CORE_MODULE 1\n#endif' Modules/pyexpat.c
fi
# Debian's sysconfigdata-name.diff renames the sysconfig data module
# (_sysconfigdata__aarch64-linux-gnu) in configure.ac, Makefile.pre.in and
# sysconfig.py, but not in the generated configure script, which Debian's own
# build regenerates; a cross build takes the module's name from it.
sed -i 's/_sysconfigdata_\$(ABIFLAGS)_\$(MACHDEP)_\$(MULTIARCH)/_sysconfigdata_$(ABIFLAGS)_$(MULTIARCH)/' configure
grep -qF '_PYTHON_SYSCONFIGDATA_NAME=_sysconfigdata_$(ABIFLAGS)_$(MULTIARCH) ' configure
# Both builds are made outside the source tree: first the build Python, for
# this machine and run from where it is built, then the cross build.
src=$PWD
mkdir /build/native /build/cross
cd /build/native
"$src/configure" --with-ensurepip=no >/dev/null
make -j"$JOBS" >/dev/null
build_python=/build/native/python
"$build_python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
cd /build/cross
export PKG_CONFIG_LIBDIR=/usr/lib/$HOST_TRIPLET/pkgconfig:/usr/share/pkgconfig
ac_cv_func_sem_clockwait=no ac_cv_file__dev_ptmx=yes ac_cv_file__dev_ptc=no ac_cv_buggy_getaddrinfo=no \
    "$src/configure" --host="$HOST_TRIPLET" --build="$(gcc -dumpmachine)" --with-build-python="$build_python" \
    --prefix="$PREFIX" --enable-shared --with-openssl="$out" --with-ensurepip=no \
    CFLAGS="-include /usr/local/include/glibc-compat.h" \
    LDFLAGS="-Wl,-rpath,$PREFIX/lib"
make -j"$JOBS"
make install DESTDIR="$DESTDIR"
# Every extension module of the standard library must have been built (a
# missing one breaks the program when frozen); build-root.sh then imports
# them on the target.
for module in pyexpat _elementtree _ssl _hashlib _ctypes _lzma _bz2 zlib _sqlite3 _uuid _decimal _multiprocessing; do
    ls "$out"/lib/python3.11/lib-dynload/"$module".cpython-311-"$HOST_TRIPLET".so
done
if ls "$out"/lib/python3.11/lib-dynload/*_failed.so 2>/dev/null; then exit 1; fi
cd /
rm -rf /build
