"""Running the program: in process through `main(argv)`, and as Moodle does,
as a subprocess with `-m moodlemlbackend.MODULE`."""

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

from mlbackend.cli import main

ROOT = Path(__file__).resolve().parent.parent.parent


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


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)
