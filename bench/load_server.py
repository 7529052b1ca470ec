#!/usr/bin/env python3
"""Load check of server mode: concurrent prediction requests to one server,
or to several replicas sharing an S3 bucket.

    python bench/load_server.py [TRAIN.csv PREDICT.csv] [--url URL --user U --password P]
                                [--clients 16] [--requests 200] [--workers 8]
                                [--replicas 3 [--trainings 3]]

Without --url it starts its own `mlbackend serve` on a free loopback port
(models in a temporary directory, a PBKDF2 user as `mlbackend passwd` makes)
and stops it at the end. It trains one model, then sends the prediction
file REQUESTS times from CLIENTS threads, a new connection per request as
Moodle's curl does, and prints one JSON line: errors, p50/p95 latency and
throughput, beside the old server's figures on the same kind of machine.

With --replicas N it starts moto's S3 server on loopback and N replicas
sharing one bucket, and sends the requests round-robin, as a load balancer
does; meanwhile TRAININGS trainings of other models (the training file,
round-robin too) run beside the predictions. Besides latency and throughput
it reports the S3 requests each prediction cost, read from moto's request
log: `get_body` (GET answered with the model) and `get_304` (the
conditional GET that found the replica's copy current), and each replica's
own count of its S3 calls (logged when it stops).

Without files it makes synthetic ones; the issue's check uses site-a:
    python bench/load_server.py ../shared/datasets/site-a-training.csv \\
        ../shared/datasets/site-a-prediction.csv [--replicas 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import re
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
#: This backend, one server with local storage, same load (issue 13's reference).
ONE_SERVER = {"errors": 0, "p95_s": 0.40, "throughput_rps": 48.7}
BUCKET = "mlbackend-bench"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("train", nargs="?", help="Moodle training CSV (default: synthetic)")
    ap.add_argument("predict", nargs="?", help="Moodle prediction CSV (default: synthetic)")
    ap.add_argument("--url", help="an already running server (default: start one)")
    ap.add_argument("--user", default="moodle", help="user name; default: %(default)s")
    ap.add_argument("--password", help="password (with --url)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=200, help="prediction requests in all")
    ap.add_argument("--workers", type=int, default=8, help="server threads (own server only)")
    ap.add_argument(
        "--replicas",
        type=int,
        default=0,
        help="start this many replicas sharing an S3 bucket (moto's server)",
    )
    ap.add_argument(
        "--trainings",
        type=int,
        default=3,
        help="trainings of other models beside the predictions (with --replicas)",
    )
    a = ap.parse_args()
    if bool(a.train) != bool(a.predict):
        ap.error("give both TRAIN.csv and PREDICT.csv, or neither")
    if a.replicas and a.url:
        ap.error("--replicas starts its own servers: no --url")

    with tempfile.TemporaryDirectory(prefix="mlbackend-bench-") as tmp:
        train, predict = (a.train, a.predict) if a.train else synthetic(tmp)
        if a.replicas:
            result = replicas(tmp, a, train, predict)
            result["dataset"] = os.path.basename(predict)
            result["one_server"] = ONE_SERVER
            print(json.dumps(result))
            return
        server = None
        url, password = a.url, a.password
        if url is None:
            password = secrets.token_urlsafe(12)
            url, server, _ = start_server(tmp, a.user, password, a.workers)
        elif password is None:
            ap.error("--password is needed with --url")
        try:
            result = run(url, (a.user, password), train, predict, a.clients, a.requests)
        finally:
            if server is not None:
                stop(server)
    result["dataset"] = os.path.basename(predict)
    result["old_server"] = OLD_SERVER
    result["p95_times_lower_than_old"] = round(OLD_SERVER["p95_s"] / result["p95_s"], 1)
    print(json.dumps(result))


def run(
    url: str, auth: tuple[str, str], train: str, predict: str, clients: int, total: int
) -> dict[str, Any]:
    uid = f"bench{int(time.time())}"
    form = {"uniqueid": uid, "dirhash": "v1"}
    train_once(url, auth, form, train)
    t0 = time.perf_counter()
    results = predictions([url], auth, form, predict, clients, total)
    wall = time.perf_counter() - t0
    requests.post(f"{url}/deletemodel", data={"uniqueid": uid}, auth=auth, timeout=60)
    return {"requests": total, "clients": clients, **figures(results, wall)}


def replicas(tmp: str, a: argparse.Namespace, train: str, predict: str) -> dict[str, Any]:
    """N replicas on moto's S3 server, round-robin, predictions beside trainings."""
    import boto3

    password = secrets.token_urlsafe(12)
    auth = (a.user, password)
    s3_env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.path.join(tmp, "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": os.path.join(tmp, "no-aws-credentials"),
    }
    moto_url, moto, moto_log = start_process(
        tmp,
        "moto",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "{port}"],
        {**os.environ, **s3_env},
    )
    servers: list[tuple[str, subprocess.Popen[bytes], str]] = []
    try:
        boto3.session.Session().client(
            "s3",
            endpoint_url=moto_url,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
        ).create_bucket(Bucket=BUCKET)
        for i in range(a.replicas):
            servers.append(
                start_server(
                    tmp,
                    a.user,
                    password,
                    a.workers,
                    name=f"replica{i}",
                    env={**s3_env, "MOODLE_MLBACKEND_PYTHON_S3_BUCKET_NAME": BUCKET},
                    args=["--s3-endpoint-url", moto_url],
                )
            )
        urls = [url for url, _, _ in servers]
        uid = f"bench{int(time.time())}"
        form = {"uniqueid": uid, "dirhash": "v1"}
        train_once(urls[0], auth, form, train)
        body = open(predict, "rb").read()
        for url in urls:  # every replica fetches the model once: the run is warm
            requests.post(
                f"{url}/prediction",
                data=form,
                auth=auth,
                timeout=600,
                files={"dataset": ("prediction.csv", body)},
            ).raise_for_status()
        mark = os.path.getsize(moto_log)

        def other_training(j: int) -> bool:
            other = {"uniqueid": f"{uid}other{j}", "dirhash": "v1"}
            try:
                train_once(urls[j % len(urls)], auth, other, train)
                return True
            except SystemExit as exc:
                print(exc, file=sys.stderr)
                return False

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max(1, a.trainings)) as side:
            trained = [side.submit(other_training, j) for j in range(a.trainings)]
            results = predictions(urls, auth, form, predict, a.clients, a.requests)
            wall = time.perf_counter() - t0
            training_errors = sum(not f.result() for f in trained)
        with open(moto_log, "rb") as f:
            f.seek(mark)
            traffic = s3_requests(f.read().decode("utf-8", "replace"), BUCKET, f"{uid}/v1")
        for url in urls[:1]:
            for j in range(a.trainings):
                requests.post(
                    f"{url}/deletemodel", data={"uniqueid": f"{uid}other{j}"}, auth=auth, timeout=60
                )
            requests.post(f"{url}/deletemodel", data={"uniqueid": uid}, auth=auth, timeout=60)
    finally:
        for _, proc, _ in servers:
            stop(proc)
        stop(moto)
    per_replica = []
    for _, _, log in servers:
        found = re.findall(r"S3 requests: (.*)", open(log, errors="replace").read())
        per_replica.append(found[-1] if found else "not logged")
    n = a.requests
    return {
        "replicas": a.replicas,
        "requests": n,
        "clients": a.clients,
        **figures(results, wall),
        "trainings_beside": a.trainings,
        "training_errors": training_errors,
        "s3_per_prediction": {name: round(count / n, 3) for name, count in traffic.items()},
        "s3_requests_by_replica": per_replica,
    }


def s3_requests(log: str, bucket: str, key: str) -> dict[str, int]:
    """Requests moto served for one object, by kind, from its request log."""
    log = re.sub(r"\x1b\[[0-9;]*m", "", log)  # werkzeug colours some lines
    counts = {"get_body": 0, "get_304": 0, "other": 0}
    for method, status in re.findall(
        rf'"([A-Z]+) /{re.escape(bucket)}/{re.escape(key)}'
        r'(?:\?[^ ]*)? HTTP/1\.1" (\d{3})',
        log,
    ):
        if method == "GET" and status == "200":
            counts["get_body"] += 1
        elif method == "GET" and status == "304":
            counts["get_304"] += 1
        else:
            counts["other"] += 1
    return counts


def train_once(url: str, auth: tuple[str, str], form: dict[str, str], train: str) -> None:
    with open(train, "rb") as f:
        r = requests.post(
            f"{url}/training", data=form, files={"dataset": f}, auth=auth, timeout=3600
        )
    if r.status_code != 200 or r.json().get("status") != 0:
        raise SystemExit(f"training failed: {r.status_code} {r.text[:300]}")


def predictions(
    urls: list[str],
    auth: tuple[str, str],
    form: dict[str, str],
    predict: str,
    clients: int,
    total: int,
) -> list[tuple[bool, float]]:
    """TOTAL predictions from CLIENTS threads, request i to urls[i % len(urls)]."""
    body = open(predict, "rb").read()

    def one(i: int) -> tuple[bool, float]:
        t0 = time.perf_counter()
        try:
            rr = requests.post(
                f"{urls[i % len(urls)]}/prediction",
                data=form,
                auth=auth,
                timeout=600,
                files={"dataset": ("prediction.csv", body)},
            )
            ok = rr.status_code == 200 and rr.json().get("status") == 0
        except requests.RequestException:
            ok = False
        return ok, time.perf_counter() - t0

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(total)))


def figures(results: list[tuple[bool, float]], wall: float) -> dict[str, Any]:
    latencies = sorted(t for _, t in results)
    return {
        "errors": sum(not ok for ok, _ in results),
        "p50_s": round(latencies[len(latencies) // 2], 3),
        "p95_s": round(latencies[math.ceil(0.95 * len(latencies)) - 1], 3),
        "throughput_rps": round(len(results) / wall, 1),
    }


def start_server(
    tmp: str,
    user: str,
    password: str,
    workers: int,
    name: str = "server",
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    launcher: list[str] | None = None,
) -> tuple[str, subprocess.Popen[bytes], str]:
    """`mlbackend serve` with a PBKDF2 user; `launcher`: the Python arguments
    before `serve` (default `-m mlbackend`)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    entry = subprocess.run(
        [sys.executable, "-m", "mlbackend", "passwd", user, "--stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
        env=full_env,
        check=True,
    ).stdout.strip()
    full_env.update(
        MOODLE_MLBACKEND_PYTHON_USERS=entry, MOODLE_MLBACKEND_PYTHON_DIR=os.path.join(tmp, "models")
    )
    full_env.update(env or {})
    return start_process(
        tmp,
        name,
        [
            sys.executable,
            *(launcher or ["-m", "mlbackend"]),
            "serve",
            "--port",
            "{port}",
            "--workers",
            str(workers),
            *(args or []),
        ],
        full_env,
    )


def start_process(
    tmp: str, name: str, argv: list[str], env: dict[str, str]
) -> tuple[str, subprocess.Popen[bytes], str]:
    """Start `argv` ('{port}' replaced by a free port); returns its URL, process and log."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = os.path.join(tmp, f"{name}.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [arg.replace("{port}", str(port)) for arg in argv],
            env=env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} did not start: " + open(log_path).read()[-2000:])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return f"http://127.0.0.1:{port}", proc, log_path
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise SystemExit(f"{name} did not listen within 60 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
