"""Whether this CPU can run NumPy and TensorFlow, asked before importing them.

NumPy's wheels need x86-64-v2 (SSE4.2, POPCNT...) and TensorFlow's need AVX
as well; on an older CPU, or a virtual machine given a generic CPU type such as
Proxmox's `kvm64`, importing them kills the process with SIGILL before it can
answer. `mlbackend.actions` asks here first, so that Moodle gets the
contract's JSON with status 1 and a sentence the admin can act on.

The features are read with the CPUID instruction itself (a few bytes of
machine code run through ctypes), as NumPy and TensorFlow see them, also under
an emulator or a hypervisor that hides features without changing
/proc/cpuinfo; AVX counts only when the kernel enables its registers (XGETBV).
Where executable memory is refused (a hardened kernel), /proc/cpuinfo's flags
are used, which the kernel derives from the same CPUID. On other machines than
x86-64 nothing is checked.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import platform
from collections.abc import Callable
from typing import Any

from mlbackend.contract import BackendError

CpuidFn = Callable[[int, int], tuple[int, int, int, int]]
XgetbvFn = Callable[[int], int]

#: x86-64-v2 (the psABI's level): what NumPy's wheels are built for.
X86_64_V2 = ("sse3", "ssse3", "sse4_1", "sse4_2", "popcnt", "cx16", "lahf_lm")
#: What TensorFlow's wheels are built for, on top of x86-64-v2.
TENSORFLOW = ("avx",)

#: How the features are named for people (and /proc/cpuinfo's names for them).
NAMES = {
    "sse3": "SSE3",
    "ssse3": "SSSE3",
    "sse4_1": "SSE4.1",
    "sse4_2": "SSE4.2",
    "popcnt": "POPCNT",
    "cx16": "CMPXCHG16B",
    "lahf_lm": "LAHF-SAHF",
    "avx": "AVX",
}
_CPUINFO_NAMES = {"sse3": "pni"}

ADVICE = (
    "If this is a virtual machine, give it the CPU type 'host' (or 'x86-64-v2-AES' "
    "with the AVX flag), or run mlbackend in server mode on another machine and "
    "point Moodle to it."
)


def require_numpy() -> None:
    """Raise BackendError unless NumPy can run on this CPU (x86-64-v2)."""
    missing = missing_features(X86_64_V2)
    if missing:
        raise BackendError(
            f"This computer's CPU lacks {_names(missing)} (x86-64-v2), which NumPy needs: "
            f"mlbackend can only answer 'version' here. {ADVICE}"
        )


def require_tensorflow() -> None:
    """Raise BackendError unless TensorFlow can run on this CPU (x86-64-v2 and AVX)."""
    require_numpy()
    missing = missing_features(TENSORFLOW)
    if missing:
        raise BackendError(
            f"This computer's CPU lacks {_names(missing)}, which TensorFlow needs to train "
            f"and evaluate models; prediction, export and import still work here. {ADVICE}"
        )


def missing_features(needed: tuple[str, ...]) -> list[str]:
    """The features in `needed` this CPU lacks; none when they cannot be read."""
    flags = cpu_features()
    if flags is None:
        return []
    return [f for f in needed if f not in flags]


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str] | None:
    """This CPU's features among X86_64_V2 and TENSORFLOW (None: not x86-64, or
    neither CPUID nor /proc/cpuinfo can be read)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        return features_from_cpuid(_cpuid, _xgetbv)
    except OSError:  # no executable memory
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                return features_from_cpuinfo(f.read())
        except OSError:
            return None


def features_from_cpuid(cpuid: CpuidFn, xgetbv: XgetbvFn) -> frozenset[str]:
    """The features from the CPUID leaves (Intel SDM vol. 2A, CPUID)."""
    max_leaf = cpuid(0, 0)[0]
    ecx1 = cpuid(1, 0)[2] if max_leaf >= 1 else 0
    ext_ecx = cpuid(0x80000001, 0)[2] if cpuid(0x80000000, 0)[0] >= 0x80000001 else 0
    bits = {
        "sse3": ecx1 >> 0,
        "ssse3": ecx1 >> 9,
        "cx16": ecx1 >> 13,
        "sse4_1": ecx1 >> 19,
        "sse4_2": ecx1 >> 20,
        "popcnt": ecx1 >> 23,
        "lahf_lm": ext_ecx >> 0,
    }
    found = {name for name, value in bits.items() if value & 1}
    osxsave, avx = (ecx1 >> 27) & 1, (ecx1 >> 28) & 1
    if avx and osxsave and xgetbv(0) & 0b110 == 0b110:  # the kernel saves XMM and YMM
        found.add("avx")
    return frozenset(found)


def features_from_cpuinfo(text: str) -> frozenset[str]:
    """The features from /proc/cpuinfo's first `flags` line."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            return frozenset(
                f for f in (*X86_64_V2, *TENSORFLOW) if _CPUINFO_NAMES.get(f, f) in flags
            )
    return frozenset()


def _names(features: list[str]) -> str:
    names = [NAMES.get(f, f) for f in features]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


# x86-64 System V machine code. cpuid(leaf, subleaf, out): out[0..3] = eax, ebx,
# ecx, edx; rbx is callee-saved, hence the push and pop.
_CPUID_CODE = bytes(
    [
        0x53,  # push rbx
        0x89,
        0xF8,  # mov eax, edi
        0x89,
        0xF1,  # mov ecx, esi
        0x49,
        0x89,
        0xD0,  # mov r8, rdx
        0x0F,
        0xA2,  # cpuid
        0x41,
        0x89,
        0x00,  # mov [r8], eax
        0x41,
        0x89,
        0x58,
        0x04,  # mov [r8+4], ebx
        0x41,
        0x89,
        0x48,
        0x08,  # mov [r8+8], ecx
        0x41,
        0x89,
        0x50,
        0x0C,  # mov [r8+12], edx
        0x5B,  # pop rbx
        0xC3,  # ret
    ]
)
# xgetbv(index): edx:eax of XGETBV as one 64-bit value.
_XGETBV_CODE = bytes(
    [
        0x89,
        0xF9,  # mov ecx, edi
        0x0F,
        0x01,
        0xD0,  # xgetbv
        0x48,
        0xC1,
        0xE2,
        0x20,  # shl rdx, 32
        0x48,
        0x09,
        0xD0,  # or rax, rdx
        0xC3,  # ret
    ]
)


@functools.lru_cache(maxsize=1)
def _machine_code() -> tuple[mmap.mmap, Any, Any]:
    """The two functions above in an executable page (OSError if refused)."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(_CPUID_CODE)
    page.seek(64)
    page.write(_XGETBV_CODE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(page))
    cpuid = ctypes.CFUNCTYPE(
        None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)
    )(base)
    xgetbv = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint32)(base + 64)
    return page, cpuid, xgetbv  # the page must live as long as the functions


def _cpuid(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    out = (ctypes.c_uint32 * 4)()
    _machine_code()[1](leaf, subleaf, out)
    return out[0], out[1], out[2], out[3]


def _xgetbv(index: int) -> int:
    return int(_machine_code()[2](index))
