"""Starting real servers for the server-mode tests: `mlbackend serve` and moto's
S3 server as subprocesses on free loopback ports, stopped by their own pid."""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from helpers.run import backend_env

HOST = "127.0.0.1"
#: Seconds a server may take to start listening (TensorFlow is not imported at start).
START_TIMEOUT = 60.0

USER, PASSWORD = "moodle", "secret"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], *logs: Path) -> None:
    """Poll until the port accepts connections; bounded in time, fails if the process died."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = "\n".join(log.read_text() for log in logs if log.exists())
            raise RuntimeError(f"server exited with {proc.returncode} before listening:\n{detail}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"nothing listened on {HOST}:{port} within {START_TIMEOUT} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the server shuts down cleanly on it), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@dataclass
class Server:
    """One `mlbackend serve` process and the files it writes."""

    url: str
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    tempdir: Path
    storage: Path | None = None
    auth: tuple[str, str] = (USER, PASSWORD)
    extra: dict[str, Any] = field(default_factory=dict)

    def post(
        self,
        endpoint: str,
        data: dict[str, Any],
        files: dict[str, Any] | None = None,
        auth: Any = "default",
        timeout: float = 600,
    ) -> requests.Response:
        return requests.post(
            f"{self.url}/{endpoint}",
            data=data,
            files=files,
            auth=self.auth if auth == "default" else auth,
            timeout=timeout,
        )

    def get(
        self,
        endpoint: str,
        params: dict[str, Any] | None = None,
        auth: Any = "default",
        timeout: float = 600,
    ) -> requests.Response:
        return requests.get(
            f"{self.url}/{endpoint}",
            params=params,
            auth=self.auth if auth == "default" else auth,
            timeout=timeout,
        )

    def train(self, uid: str, dirhash: str, path: str) -> dict[str, Any]:
        with open(path, "rb") as f:
            r = self.post("training", {"uniqueid": uid, "dirhash": dirhash}, {"dataset": f})
        assert r.status_code == 200, r.text
        return r.json()

    def predict(self, uid: str, dirhash: str, path: str) -> dict[str, Any]:
        with open(path, "rb") as f:
            r = self.post("prediction", {"uniqueid": uid, "dirhash": dirhash}, {"dataset": f})
        assert r.status_code == 200, r.text
        return r.json()

    def log_text(self) -> str:
        return self.stderr.read_text()


#: Runs the server with Python's garbage collector off: what a server
#: releases, it must release without it (cycles would keep it).
WITHOUT_GC = [
    "-c",
    "import gc, sys; gc.disable(); from mlbackend.cli import main_exit; main_exit(sys.argv[1:])",
]


def local_env(tmp: Path) -> dict[str, str]:
    """A server's environment: the tests' user, models in `tmp/models`."""
    return {
        "MOODLE_MLBACKEND_PYTHON_USERS": f"{USER}:{PASSWORD}",
        "MOODLE_MLBACKEND_PYTHON_DIR": str(tmp / "models"),
    }


def start_server(
    tmp: Path,
    env: dict[str, str],
    *args: str,
    name: str = "server",
    launcher: list[str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Server:
    """Start `mlbackend serve` on a free port with `env` added to the backend's.

    `launcher`: the Python arguments before `serve` (default `-m mlbackend`,
    see `WITHOUT_GC`); `preexec_fn`: run in the child before it starts (to
    set resource limits)."""
    tempdir = tmp / f"{name}-tmp"
    tempdir.mkdir(parents=True)
    stdout, stderr = tmp / f"{name}.out", tmp / f"{name}.err"
    port = free_port()
    full_env = backend_env({"MOODLE_MLBACKEND_TEMPDIR": str(tempdir), **env})
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                *(launcher or ["-m", "mlbackend"]),
                "serve",
                "--host",
                HOST,
                "--port",
                str(port),
                *args,
            ],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=full_env,
            preexec_fn=preexec_fn,
        )
    wait_for_port(port, proc, stdout, stderr)
    storage = env.get("MOODLE_MLBACKEND_PYTHON_DIR")
    return Server(
        url=f"http://{HOST}:{port}",
        proc=proc,
        stdout=stdout,
        stderr=stderr,
        tempdir=tempdir,
        storage=Path(storage) if storage else None,
    )


def start_moto(tmp: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """moto's S3 server: a real S3 endpoint process on loopback."""
    port = free_port()
    log = tmp / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **aws_env(tmp)},
        )
    wait_for_port(port, proc, log)
    return f"http://{HOST}:{port}", proc


def aws_env(tmp: Path) -> dict[str, str]:
    """Fake credentials, no config files and no instance metadata: only the loopback endpoint."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
    }


def dirhash(outputdir: str) -> str:
    """What Moodle sends: md5 of its OUTPUTDIR."""
    return hashlib.md5(outputdir.encode()).hexdigest()


def zip_names(data: bytes) -> list[str]:
    return zipfile.ZipFile(io.BytesIO(data)).namelist()


def make_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


@dataclass
class S3Endpoint:
    """moto's S3 server with one bucket, and a client of it for the tests' own checks."""

    url: str
    proc: subprocess.Popen[bytes]
    client: Any
    env: dict[str, str]
    bucket: str
    log: Path
    buckets: int = 0

    def keys(self, prefix: str = "") -> list[str]:
        answer = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for o in answer.get("Contents", []))

    def get(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def requests_for(self, key: str, bucket: str | None = None) -> list[tuple[str, int]]:
        """(method, HTTP status) of every request moto served for `key` (of
        `bucket`, by default the endpoint's first), from its log."""
        pattern = re.compile(
            rf'"([A-Z]+) /{re.escape(bucket or self.bucket)}/{re.escape(key)}'
            r'(?:\?[^ ]*)? HTTP/1\.1" (\d{3})'
        )
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log.read_text())  # werkzeug's colours
        return [(m[1], int(m[2])) for m in pattern.finditer(text)]

    def new_bucket(self) -> str:
        """A new empty bucket (tests sharing one endpoint each get their own)."""
        self.buckets += 1
        name = f"{self.bucket}-{self.buckets}"
        self.client.create_bucket(Bucket=name)
        return name

    def server_env(self, **extra: str) -> dict[str, str]:
        """The environment of `mlbackend serve` replicas sharing this bucket."""
        return {
            **self.env,
            "MOODLE_MLBACKEND_PYTHON_USERS": f"{USER}:{PASSWORD}",
            "MOODLE_MLBACKEND_PYTHON_S3_BUCKET_NAME": self.bucket,
            **extra,
        }


def start_s3(tmp: Path, bucket: str) -> S3Endpoint:
    import boto3

    url, proc = start_moto(tmp)
    env = aws_env(tmp)
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    client.create_bucket(Bucket=bucket)
    return S3Endpoint(
        url=url, proc=proc, client=client, env=env, bucket=bucket, log=tmp / "moto.log"
    )


def eventually(condition: Any, what: str) -> None:
    """Poll until `condition()` (a server finishes with a hung-up client on its
    own time); a safety net against a hang, not a measure of time."""
    for _ in range(1200):
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


def wait_for_log(server: Server, text: str, count: int = 1, timeout: float = 600) -> None:
    """Poll the server's log until `text` appears `count` times; fails if the server died.

    Bounded, so that a broken server fails the test instead of hanging it; the
    bound is not a performance assertion.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.log_text().count(text) >= count:
            return
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{server.log_text()}")
        time.sleep(0.05)
    raise RuntimeError(f"{text!r} did not appear in the server log:\n{server.log_text()}")
