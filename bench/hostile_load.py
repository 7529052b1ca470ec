#!/usr/bin/env python3
"""Moodle's requests while many addresses hold the server's connections.

    python bench/hostile_load.py [TRAIN.csv PREDICT.csv] [--addresses 45] [--per-address 32]
                                 [--seconds 30] [--nofile N] [--max-connections N]

Starts its own `mlbackend serve` on 127.0.0.1 (models in a temporary
directory), trains one model, then for SECONDS keeps ADDRESSES x
PER_ADDRESS connections open from the loopback addresses 127.0.0.2, ...
(Linux routes 127/8 to lo), each having sent half a request line, and
renewed as an attacker would: reopened at once when the server closes it,
and every 19 s (under the 20 s header deadline) otherwise. Meanwhile
Moodle's client, from 127.0.0.1, asks for /version then a prediction,
a new connection each time as curl does, one after the other. It prints
one JSON line: Moodle's latencies (p50, p95, max) and errors, the
connections held and renewed, and how much the server's log grew.

--nofile N starts the server with N open files at most (soft and hard,
prlimit); with --max-connections above what N descriptors can hold, the
connections from many addresses push the process to its descriptor limit.

Needs a few thousand descriptors itself: it raises its own soft limit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import secrets
import select
import socket
import sys
import tempfile
import threading
import time
from typing import Any

import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load_server import start_server, stop, synthetic, train_once  # noqa: E402

#: Half a request line: the headers never end.
HALF_OPEN = b"GET /version HTTP/1.1\r\nHost: x\r\nX-Waiting: "
RENEW_SECONDS = 19.0


class Holder(threading.Thread):
    """Keeps `count` half-open connections from one source address."""

    def __init__(self, source: str, count: int, port: int, stop_event: threading.Event) -> None:
        super().__init__(daemon=True)
        self.source, self.count, self.port, self.stop_event = source, count, port, stop_event
        self.opened = self.closed_by_server = self.renewed = self.failed = 0

    def _open(self) -> socket.socket | None:
        sock = socket.socket()
        try:
            sock.bind((self.source, 0))
            sock.settimeout(2)
            sock.connect(("127.0.0.1", self.port))
            sock.sendall(HALF_OPEN)
            sock.setblocking(False)
        except OSError:
            sock.close()
            self.failed += 1
            return None
        self.opened += 1
        return sock

    def run(self) -> None:
        socks: dict[int, tuple[socket.socket, float]] = {}
        poller = select.poll()
        while not self.stop_event.is_set():
            while len(socks) < self.count and not self.stop_event.is_set():
                sock = self._open()
                if sock is None:
                    time.sleep(0.05)
                    break
                socks[sock.fileno()] = (sock, time.monotonic())
                poller.register(sock, select.POLLIN)
            for fd, _ in poller.poll(200):
                sock, _ = socks.pop(fd)
                poller.unregister(fd)
                sock.close()
                self.closed_by_server += 1
            now = time.monotonic()
            for fd, (sock, since) in list(socks.items()):
                if now - since > RENEW_SECONDS:
                    socks.pop(fd)
                    poller.unregister(fd)
                    sock.close()
                    self.renewed += 1
        for sock, _ in socks.values():
            sock.close()


def moodle(
    url: str, auth: tuple[str, str], form: dict[str, str], body: bytes, until: float
) -> dict[str, Any]:
    """/version then a prediction, one after the other, until `until`."""
    times: dict[str, list[float]] = {"version": [], "prediction": []}
    errors: list[str] = []
    while time.monotonic() < until:
        for what in ("version", "prediction"):
            t0 = time.perf_counter()
            try:
                if what == "version":
                    r = requests.get(f"{url}/version", timeout=60)
                    ok = r.status_code == 200
                else:
                    r = requests.post(
                        f"{url}/prediction",
                        data=form,
                        auth=auth,
                        files={"dataset": ("prediction.csv", body)},
                        timeout=60,
                    )
                    ok = r.status_code == 200 and r.json().get("status") == 0
                if not ok:
                    errors.append(f"{what}: {r.status_code} {r.text[:100]}")
            except requests.RequestException as exc:
                errors.append(f"{what}: {type(exc).__name__}")
            times[what].append(time.perf_counter() - t0)
        time.sleep(0.2)
    out: dict[str, Any] = {"errors": len(errors), "first_errors": errors[:3]}
    for what, values in times.items():
        values.sort()
        out[what] = {
            "n": len(values),
            "p50_s": round(values[len(values) // 2], 3),
            "p95_s": round(values[math.ceil(0.95 * len(values)) - 1], 3),
            "max_s": round(values[-1], 3),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("train", nargs="?", help="Moodle training CSV (default: synthetic)")
    ap.add_argument("predict", nargs="?", help="Moodle prediction CSV (default: synthetic)")
    ap.add_argument(
        "--addresses", type=int, default=45, help="source addresses holding connections"
    )
    ap.add_argument("--per-address", type=int, default=32, help="connections held per address")
    ap.add_argument("--seconds", type=float, default=30, help="how long the connections are held")
    ap.add_argument("--nofile", type=int, help="the server's limit of open files (prlimit)")
    ap.add_argument("--max-connections", type=int, help="the server's --max-connections")
    ap.add_argument("--workers", type=int, default=8, help="the server's --workers")
    a = ap.parse_args()
    if bool(a.train) != bool(a.predict):
        ap.error("give both TRAIN.csv and PREDICT.csv, or neither")
    if not 1 <= a.addresses <= 250:
        ap.error("--addresses: 1 to 250 (127.0.0.2 to 127.0.0.251)")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    with tempfile.TemporaryDirectory(prefix="mlbackend-hostile-") as tmp:
        train, predict = (a.train, a.predict) if a.train else synthetic(tmp)
        password = secrets.token_urlsafe(12)
        args = ["--workers", str(a.workers)]
        if a.max_connections:
            args += ["--max-connections", str(a.max_connections)]
        url, server, log = start_server(
            tmp, "moodle", password, a.workers, args=args, launcher=nofile_launcher(a.nofile)
        )
        try:
            auth = ("moodle", password)
            form = {"uniqueid": f"hostile{int(time.time())}", "dirhash": "v1"}
            train_once(url, auth, form, train)
            body = open(predict, "rb").read()
            port = int(url.rsplit(":", 1)[1])
            before = moodle(url, auth, form, body, time.monotonic() + 3)
            log_size, log_lines = os.path.getsize(log), _lines(log)
            stop_event = threading.Event()
            holders = [
                Holder(f"127.0.0.{i + 2}", a.per_address, port, stop_event)
                for i in range(a.addresses)
            ]
            for h in holders:
                h.start()
            time.sleep(min(5.0, a.seconds / 3))  # the connections are in place
            during = moodle(url, auth, form, body, time.monotonic() + a.seconds)
            stop_event.set()
            for h in holders:
                h.join()
            grown = os.path.getsize(log) - log_size
            lines = _lines(log) - log_lines
            text = open(log, errors="replace").read()
            alive = server.poll() is None
        finally:
            stop(server)
    held = {
        "addresses": a.addresses,
        "per_address": a.per_address,
        "opened": sum(h.opened for h in holders),
        "closed_by_server": sum(h.closed_by_server for h in holders),
        "renewed": sum(h.renewed for h in holders),
        "connect_failures": sum(h.failed for h in holders),
    }
    start_line = [line for line in text.splitlines() if "serving Moodle" in line][:1]
    print(
        json.dumps(
            {
                "seconds": a.seconds,
                "server": start_line[0].split("INFO: ", 1)[-1] if start_line else "",
                "moodle_before": before,
                "moodle_during": during,
                "held": held,
                "log_growth_bytes": grown,
                "log_growth_lines": lines,
                "log_access_lines": text.count(" access: "),
                "log_out_of_descriptors": text.count("out of file descriptors"),
                "log_tracebacks": text.count("Traceback"),
                "server_alive": alive,
            }
        )
    )


def nofile_launcher(nofile: int | None) -> list[str] | None:
    """Python arguments that run the server under a limit of open files."""
    if not nofile:
        return None
    return [
        "-c",
        "import resource, sys; n = int(sys.argv[1]); "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
        "from mlbackend.cli import main_exit; main_exit(sys.argv[2:])",
        str(nofile),
    ]


def _lines(path: str) -> int:
    with open(path, "rb") as f:
        return f.read().count(b"\n")


if __name__ == "__main__":
    main()
