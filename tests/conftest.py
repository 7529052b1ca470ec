"""Shared fixtures: Moodle-format data made by the tests, and the two ways of
running the program (in process through `main()`, and as Moodle does, as a
subprocess with `-m moodlemlbackend.MODULE`)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hostile import FUZZ
from hypothesis import HealthCheck, settings

from mlbackend import synthetic
from mlbackend.cli import main

ROOT = Path(__file__).resolve().parent.parent

# Property-based tests (hypothesis): `make test` runs the same few examples
# every time, so that a red run can be repeated; `make fuzz` draws fresh ones
# and keeps failing examples in .hypothesis/ to replay them first next time.
# No deadline: the machine is shared, and some examples start a process.
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile(
    "quick",
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=_SLOW_OK,
    print_blob=True,
)
settings.register_profile("fuzz", deadline=None, suppress_health_check=_SLOW_OK, print_blob=True)
settings.load_profile("fuzz" if FUZZ else "quick")


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def last(self) -> str:
        lines = [line for line in self.stdout.split("\n") if line.strip()]
        return lines[-1].rstrip() if lines else ""

    @property
    def json(self) -> Any:
        return json.loads(self.last)


def backend_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def moodle(
    module: str,
    *args: Any,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    runner: tuple[str, ...] = (),
) -> Result:
    """Run the program exactly as Moodle's PHP does (stdout, stderr, exit code).

    `runner`: a command the program runs under (e.g. qemu-user and its options)."""
    cmd = [
        *runner,
        sys.executable,
        "-m",
        "mlbackend",
        "-m",
        f"moodlemlbackend.{module}",
        *[str(a) for a in args],
    ]
    p = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=backend_env(env),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Result(p.returncode, p.stdout, p.stderr)


def moodle_in_process(module: str, *args: Any, env: dict[str, str] | None = None) -> Result:
    """The same call as `moodle()`, through `main(argv)` in this process: for
    behaviour tests, which need not pay a TensorFlow start-up per call. The
    contract itself (argv, exit codes, what reaches stdout, signals) is
    checked with `moodle()`."""
    argv = ["-m", f"moodlemlbackend.{module}", *[str(a) for a in args]]
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return Result(rc, out.getvalue(), err.getvalue())


@pytest.fixture
def run_main(capsys: pytest.CaptureFixture[str]):
    """Call `main(argv)` in process; returns a Result like `moodle()`."""

    def run(*argv: Any) -> Result:
        rc = main([str(a) for a in argv])
        out = capsys.readouterr()
        return Result(rc, out.out, out.err)

    return run


@pytest.fixture(scope="session")
def datadir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def binary_data(datadir: Path) -> dict[str, Any]:
    """600 training rows and 150 prediction rows of a 15 %-positive binary target."""
    data = synthetic.generate(750, 20, seed=1)
    train = synthetic.Synthetic(data.X[:600], data.y[:600], data.classes)
    rest = synthetic.Synthetic(data.X[600:], data.y[600:], data.classes)
    return {
        "train": synthetic.write_training(str(datadir / "binary-train.csv"), train),
        "predict": str(datadir / "binary-predict.csv"),
        "answers": synthetic.write_prediction(str(datadir / "binary-predict.csv"), rest),
    }


@pytest.fixture(scope="session")
def multiclass_data(datadir: Path) -> dict[str, Any]:
    data = synthetic.generate(400, 12, classes=(0, 1, 2), seed=2)
    train = synthetic.Synthetic(data.X[:320], data.y[:320], data.classes)
    rest = synthetic.Synthetic(data.X[320:], data.y[320:], data.classes)
    return {
        "train": synthetic.write_training(str(datadir / "multi-train.csv"), train),
        "predict": str(datadir / "multi-predict.csv"),
        "answers": synthetic.write_prediction(
            str(datadir / "multi-predict.csv"), rest, id_prefix="123-"
        ),
    }


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)
