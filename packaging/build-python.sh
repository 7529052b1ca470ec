#!/usr/bin/env bash
# Run inside the build root by packaging/build-root.sh: OpenSSL 3 and CPython
# 3.11 from Debian's source packages of SOURCE_SUITE (Debian's patches and
# security fixes applied by dpkg-source), built into PREFIX with the root's
# glibc 2.31 and bound to glibc 2.28 at most (see packaging/BUILD-ROOT.md).
# No PGO or LTO: they would triple the build time on the two cores CI has,
# for a few per cent of interpreter speed where TensorFlow does the work.
# Debian's test suites are skipped for the same reason; make dist-test and
# make dist-chroot-test check the frozen result.
set -euxo pipefail
: "${SOURCE_SUITE:?}" "${PREFIX:?}" "${ARCH:?}" "${JOBS:=2}"
rm -rf /build "$PREFIX"
mkdir -p /build
cd /build
apt-get update -q
apt-get source -q "openssl/$SOURCE_SUITE" "python3.11/$SOURCE_SUITE"

# OpenSSL: the libraries and headers only (no apps, tests or docs). The
# system's CA certificates are in /etc/ssl on Debian and Ubuntu; requests and
# botocore use certifi's bundle anyway.
cd /build/openssl-3*/
./Configure "linux-$ARCH" --prefix="$PREFIX" --libdir=lib --openssldir=/etc/ssl \
    shared no-tests "-Wl,-rpath,$PREFIX/lib"
make -j"$JOBS" build_libs
make install_dev

# CPython, shared (PyInstaller bundles libpython), without pip (Debian's
# ensurepip refuses a system Python; build-root.sh runs pip from its wheel to
# fill the virtual environment). ac_cv_func_sem_clockwait=no:
# sem_clockwait is glibc 2.30, and Python falls back to sem_timedwait.
# glibc-compat.h binds exp, log, pow, exp2 and log2 to their pre-2.29 versions.
cd /build/python3.11-*/
# Debian's backport of the fix for CVE-2026-4224 makes pyexpat.c include an
# internal header, which needs Py_BUILD_CORE: Debian builds pyexpat into the
# interpreter, where that is defined; for a shared module it must be defined
# at the top of the file, as upstream 3.12 does (done here only when missing).
if grep -q '^#include "pycore_' Modules/pyexpat.c && ! grep -q Py_BUILD_CORE_MODULE Modules/pyexpat.c; then
    sed -i '1i #ifndef Py_BUILD_CORE_BUILTIN\n#  define Py_BUILD_CORE_MODULE 1\n#endif' Modules/pyexpat.c
fi
ac_cv_func_sem_clockwait=no ./configure --prefix="$PREFIX" --enable-shared \
    --with-openssl="$PREFIX" --with-ensurepip=no \
    CFLAGS="-include /usr/local/include/glibc-compat.h" \
    LDFLAGS="-Wl,-rpath,$PREFIX/lib"
make -j"$JOBS"
make install
# Every extension module of the standard library must have been built: a
# missing one (renamed *_failed.so, or absent) breaks the program when frozen.
"$PREFIX/bin/python3.11" -c 'import pyexpat, _elementtree, _ssl, _hashlib, _ctypes, _lzma, _bz2, zlib, _sqlite3, _uuid, _decimal, _multiprocessing'
if ls "$PREFIX"/lib/python3.11/lib-dynload/*_failed.so 2>/dev/null; then exit 1; fi
cd /
rm -rf /build
