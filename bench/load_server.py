#!/usr/bin/env python3
"""Load check of server mode: concurrent prediction requests to one server.

    python bench/load_server.py [TRAIN.csv PREDICT.csv] [--url URL --user U --password P]
                                [--clients 16] [--requests 200] [--workers 8]

Without --url it starts its own `mlbackend serve` on a free loopback port
(models in a temporary directory, a PBKDF2 user as `mlbackend passwd` makes)
and stops it at the end. It trains one model, then sends the prediction
file REQUESTS times from CLIENTS threads, a new connection per request as
Moodle's curl does, and prints one JSON line: errors, p50/p95 latency and
throughput, beside the old server's figures on the same kind of machine.

Without files it makes synthetic ones; the issue's check uses site-a:
    python bench/load_server.py ../shared/datasets/site-a-training.csv \\
        ../shared/datasets/site-a-prediction.csv
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: moodlemlbackend 3.0.5's server, 16 clients x 200 requests of site-a's prediction file.
OLD_SERVER = {"errors": 2, "p50_s": 8.3, "p95_s": 10.4, "throughput_rps": 1.8}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train", nargs="?", help="Moodle training CSV (default: synthetic)")
    ap.add_argument("predict", nargs="?", help="Moodle prediction CSV (default: synthetic)")
    ap.add_argument("--url", help="an already running server (default: start one)")
    ap.add_argument("--user", default="moodle", help="user name; default: %(default)s")
    ap.add_argument("--password", help="password (with --url)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=200, help="prediction requests in all")
    ap.add_argument("--workers", type=int, default=8, help="server threads (own server only)")
    a = ap.parse_args()
    if bool(a.train) != bool(a.predict):
        ap.error("give both TRAIN.csv and PREDICT.csv, or neither")

    with tempfile.TemporaryDirectory(prefix="mlbackend-bench-") as tmp:
        train, predict = (a.train, a.predict) if a.train else synthetic(tmp)
        server = None
        url, password = a.url, a.password
        if url is None:
            password = secrets.token_urlsafe(12)
            url, server = start_server(tmp, a.user, password, a.workers)
        elif password is None:
            ap.error("--password is needed with --url")
        try:
            result = run(url, (a.user, password), train, predict, a.clients, a.requests)
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=60)
    result["dataset"] = os.path.basename(predict)
    result["old_server"] = OLD_SERVER
    result["p95_times_lower_than_old"] = round(OLD_SERVER["p95_s"] / result["p95_s"], 1)
    print(json.dumps(result))


def run(url: str, auth: tuple[str, str], train: str, predict: str, clients: int,
        total: int) -> dict[str, Any]:
    uid = f"bench{int(time.time())}"
    form = {"uniqueid": uid, "dirhash": "v1"}
    with open(train, "rb") as f:
        r = requests.post(f"{url}/training", data=form, files={"dataset": f}, auth=auth,
                          timeout=3600)
    if r.status_code != 200 or r.json().get("status") != 0:
        raise SystemExit(f"training failed: {r.status_code} {r.text[:300]}")
    body = open(predict, "rb").read()

    def one(_: int) -> tuple[bool, float]:
        t0 = time.perf_counter()
        try:
            rr = requests.post(f"{url}/prediction", data=form, auth=auth, timeout=600,
                               files={"dataset": ("prediction.csv", body)})
            ok = rr.status_code == 200 and rr.json().get("status") == 0
        except requests.RequestException:
            ok = False
        return ok, time.perf_counter() - t0

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(total)))
    wall = time.perf_counter() - t0
    requests.post(f"{url}/deletemodel", data={"uniqueid": uid}, auth=auth, timeout=60)
    latencies = sorted(t for _, t in results)
    return {"requests": total, "clients": clients,
            "errors": sum(not ok for ok, _ in results),
            "p50_s": round(latencies[len(latencies) // 2], 3),
            "p95_s": round(latencies[math.ceil(0.95 * len(latencies)) - 1], 3),
            "throughput_rps": round(total / wall, 1)}


def start_server(tmp: str, user: str, password: str, workers: int
                 ) -> tuple[str, subprocess.Popen[bytes]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    entry = subprocess.run([sys.executable, "-m", "mlbackend", "passwd", user, "--stdin"],
                           input=password + "\n", capture_output=True, text=True, env=env,
                           check=True).stdout.strip()
    env.update(MOODLE_MLBACKEND_PYTHON_USERS=entry,
               MOODLE_MLBACKEND_PYTHON_DIR=os.path.join(tmp, "models"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(tmp, "server.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlbackend", "serve", "--port", str(port),
                             "--workers", str(workers)], env=env, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server did not start: " + open(log.name).read()[-2000:])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return f"http://127.0.0.1:{port}", proc
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("the server did not listen within 60 s")


def synthetic(tmp: str) -> tuple[str, str]:
    sys.path.insert(0, ROOT)
    from mlbackend import synthetic as syn

    data = syn.generate(2100, 365, seed=7)
    train = syn.Synthetic(data.X[:1850], data.y[:1850], data.classes)
    rest = syn.Synthetic(data.X[1850:], data.y[1850:], data.classes)
    paths = os.path.join(tmp, "train.csv"), os.path.join(tmp, "predict.csv")
    syn.write_training(paths[0], train)
    syn.write_prediction(paths[1], rest)
    return paths


if __name__ == "__main__":
    main()
