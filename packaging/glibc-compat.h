/* Force-included (-include) into every C file of the release's CPython and
 * OpenSSL builds in the bullseye build root (packaging/build-python.sh).
 *
 * glibc 2.29 gave exp, log, pow, exp2 and log2 new symbol versions (faster
 * code without the old SVID error handling); a program linked against glibc
 * 2.29 or later needs GLIBC_2.29 for them and will not start on glibc 2.28
 * (RHEL 8 and its rebuilds). The older versions are still in every glibc, with
 * the same results for every finite argument; they differ only in how errors
 * are reported to _LIB_VERSION/matherr, which nothing in Python uses (Python
 * checks errno and the result itself). The .symver directives below make
 * every reference to these functions in the files that include this header
 * go to the older version. packaging/buildinfo.py fails the build if
 * anything still needs a newer glibc than the promised floor.
 */
#ifndef MLBACKEND_GLIBC_COMPAT_H
#define MLBACKEND_GLIBC_COMPAT_H
#if defined(__x86_64__)
#define MLBACKEND_GLIBC_BASE "GLIBC_2.2.5"
#elif defined(__aarch64__)
#define MLBACKEND_GLIBC_BASE "GLIBC_2.17"
#endif
#ifdef MLBACKEND_GLIBC_BASE
__asm__(".symver exp,exp@" MLBACKEND_GLIBC_BASE);
__asm__(".symver log,log@" MLBACKEND_GLIBC_BASE);
__asm__(".symver pow,pow@" MLBACKEND_GLIBC_BASE);
__asm__(".symver exp2,exp2@" MLBACKEND_GLIBC_BASE);
__asm__(".symver log2,log2@" MLBACKEND_GLIBC_BASE);
#endif
#endif
