"""The CPU check (mlbackend/cpu.py): every x86-64 CPU gets an answer, never a signal.

The program runs under qemu-user's emulated CPUs: `Nehalem` (x86-64-v2 without
AVX: no TensorFlow) and `kvm64` (below x86-64-v2: no NumPy). This machine has
AVX, so an answer that says the CPU lacks it proves that the emulated CPU was
the one asked. TensorFlow never runs under emulation: the model is trained
natively. tests/frozen/qemu-check.sh does the same with the frozen program.
The emulated runs are marked `emulated`: `make cpu-test` runs them (CI does),
`make test` the rest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers.run import Result, moodle

from mlbackend import cpu

QEMU = shutil.which("qemu-x86_64")


def test_cpuinfo_flags_are_read_with_the_kernels_names() -> None:
    text = "processor\t: 0\nflags\t\t: fpu pni ssse3 cx16 sse4_1 sse4_2 popcnt lahf_lm\n"
    assert cpu.features_from_cpuinfo(text) == set(cpu.X86_64_V2)
    assert cpu.features_from_cpuinfo("processor : 0\n") == frozenset()


def test_avx_counts_only_when_the_kernel_saves_its_registers() -> None:
    ecx = sum(1 << b for b in (0, 9, 13, 19, 20, 23, 27, 28))  # v2, OSXSAVE, AVX

    def cpuid(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        return {
            0: (13, 0, 0, 0),
            1: (0, 0, ecx, 0),
            0x80000000: (0x80000008, 0, 0, 0),
            0x80000001: (0, 0, 1, 0),
        }[leaf]

    assert cpu.features_from_cpuid(cpuid, lambda _: 0b111) == {*cpu.X86_64_V2, "avx"}
    assert cpu.features_from_cpuid(cpuid, lambda _: 0b011) == set(cpu.X86_64_V2)


def test_on_aarch64_no_x86_code_runs_and_nothing_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every ARMv8 core runs NumPy and TensorFlow (tests/frozen/qemu-check.sh
    trains on emulated ones), so cpu.py asks nothing there, and above all does
    not run its x86 machine code."""

    def no_machine_code() -> None:
        raise AssertionError("x86 machine code run on aarch64")

    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(cpu, "_machine_code", no_machine_code)
    cpu.cpu_features.cache_clear()
    try:
        assert cpu.cpu_features() is None
        assert cpu.missing_features(cpu.X86_64_V2 + cpu.TENSORFLOW) == []
        cpu.require_tensorflow()
    finally:
        cpu.cpu_features.cache_clear()


def test_this_machine_has_what_numpy_and_tensorflow_need() -> None:
    if cpu.cpu_features() is None:
        pytest.skip("not x86-64")
    assert cpu.missing_features(cpu.X86_64_V2 + cpu.TENSORFLOW) == []


def emulated(cpu_model: str, module: str, *args: Any) -> Result:
    """Moodle's call, run by qemu-user on the emulated CPU `cpu_model`."""
    assert QEMU is not None
    return moodle(module, *args, timeout=600, runner=(QEMU, "-cpu", cpu_model))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, binary_data: dict[str, Any]) -> Path:
    """A model trained natively (TensorFlow never runs under emulation)."""
    if QEMU is None:
        pytest.skip("qemu-x86_64 absent")
    models = tmp_path_factory.mktemp("models")
    r = moodle("training", "m", models, binary_data["train"])
    assert r.json["status"] == 0, r.stderr
    return models


@pytest.mark.emulated
@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 absent (Debian: qemu-user)")
def test_without_avx_training_and_evaluation_answer_why(
    trained: Path, binary_data: dict[str, Any]
) -> None:
    for module, args in [
        ("training", ["m", trained, binary_data["train"]]),
        ("evaluation", ["e", trained, binary_data["train"], 0.6, 0.02, 1]),
    ]:
        r = emulated("Nehalem", module, *args)
        assert r.rc == 1, r.stderr
        info = r.json["info"][0]
        assert r.json["status"] == 1 and "lacks AVX, which TensorFlow needs" in info, info
        assert "'host'" in info and "server mode" in info, info


def same_predictions(got: dict[str, Any], want: dict[str, Any]) -> None:
    """The same answers: SSE kernels round differently from AVX ones in the
    last digit of a probability."""
    rows, expected = got["predictions"], want["predictions"]
    assert [row[:2] for row in rows] == [row[:2] for row in expected]
    assert all(abs(float(a[2]) - float(b[2])) < 1e-5 for a, b in zip(rows, expected))


@pytest.mark.emulated
@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 absent (Debian: qemu-user)")
def test_without_avx_prediction_export_import_and_version_work(
    trained: Path, binary_data: dict[str, Any], tmp_path: Path
) -> None:
    native = moodle("prediction", "m", trained, binary_data["predict"])
    r = emulated("Nehalem", "prediction", "m", trained, binary_data["predict"])
    assert r.rc == 0, r.stderr
    same_predictions(r.json, native.json)
    r = emulated("Nehalem", "export", "m", trained, tmp_path)
    assert r.rc == 0, r.stderr
    exported = r.last
    assert Path(exported).is_dir()
    r = emulated("Nehalem", "import", "copy", trained, exported)
    assert (r.rc, r.last) == (0, "Ok"), r.stderr
    r = emulated("Nehalem", "prediction", "copy", trained, binary_data["predict"])
    assert r.rc == 0, r.stderr
    same_predictions(r.json, native.json)
    assert emulated("Nehalem", "version").last == moodle("version").last


@pytest.mark.emulated
@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 absent (Debian: qemu-user)")
def test_below_x86_64_v2_every_numpy_command_answers_why(
    trained: Path, binary_data: dict[str, Any], tmp_path: Path
) -> None:
    calls = [
        ("prediction", ["m", trained, binary_data["predict"]]),
        ("training", ["m", trained, binary_data["train"]]),
        ("export", ["m", trained, tmp_path]),
        ("import", ["copy", trained, tmp_path]),
    ]
    for module, args in calls:
        r = emulated("kvm64", module, *args)
        assert r.rc == 1, (module, r.stderr)
        info = json.loads(r.last)["info"][0]
        assert "lacks SSE3" not in info  # kvm64 has SSE3: only the real gaps are named
        assert "SSE4.2" in info and "POPCNT" in info and "which NumPy needs" in info, info
    assert emulated("kvm64", "version").last == moodle("version").last
