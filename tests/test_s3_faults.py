"""A server keeps answering when its S3 store stalls or fails, and never
applies a training twice (issue 24).

`mlbackend serve` talks to moto's S3 server through tests/helpers/faultproxy.py,
which a test switches to hang, refuse, cut, answer 503, or apply a write
and lose its answer: three real processes on loopback. The server runs with
short S3 timeouts (`--s3-read-timeout 1.5 --s3-deadline 5`), so a stalled
store costs seconds; the timeouts of the tests' own requests (`GENEROUS`)
are there so that a broken server fails a test instead of hanging it, and
measure nothing.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from helpers.servers import (
    HOST,
    S3Endpoint,
    Server,
    dirhash,
    free_port,
    start_s3,
    start_server,
    stop,
    wait_for_port,
)

pytest.importorskip("moto")
pytest.importorskip("boto3")

BUCKET = "mlbackend-faults"
#: The endpoint URL carries credentials (a proxy's, say): never shown, anywhere.
ENDPOINT_USER, ENDPOINT_PASSWORD = "storeuser", "Sekr3tEndpointPassw0rd"
CONNECT_TIMEOUT, READ_TIMEOUT, DEADLINE = 1, 1.5, 5
WORKERS, MAX_WAITING = 6, 4
#: A request must come back within this, or the server is broken (not a measurement).
GENEROUS = 60


@dataclass
class Proxy:
    """tests/helpers/faultproxy.py between the server and moto, switched over its control port."""

    url: str
    control: str
    proc: subprocess.Popen[bytes]

    def set(self, default: str = "pass", *rules: dict[str, Any]) -> None:
        r = requests.post(
            f"{self.control}/rules", json={"default": default, "rules": list(rules)}, timeout=10
        )
        r.raise_for_status()

    def log(self, since: int = 0) -> list[dict[str, Any]]:
        """What the proxy did, request by request (from the `since`-th on)."""
        return list(requests.get(f"{self.control}/log", timeout=10).json())[since:]

    def seen(self, method: str, key: str, since: int = 0) -> list[dict[str, Any]]:
        """What the proxy did with the requests of one object."""
        line = re.compile(rf"^{method} /{BUCKET}/{re.escape(key)}(\?|$)")
        return [e for e in self.log(since) if line.match(e["request"])]


def start_proxy(tmp: Path, upstream: str) -> Proxy:
    port, control = free_port(), free_port()
    log = tmp / "faultproxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).parent / "helpers" / "faultproxy.py"),
                "--upstream",
                upstream,
                "--port",
                str(port),
                "--control-port",
                str(control),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    wait_for_port(control, proc, log)
    wait_for_port(port, proc, log)
    return Proxy(f"http://{HOST}:{port}", f"http://{HOST}:{control}", proc)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    endpoint = start_s3(tmp_path_factory.mktemp("faults-s3"), BUCKET)
    yield endpoint
    stop(endpoint.proc)


@pytest.fixture(scope="module")
def proxy(s3: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    started = start_proxy(tmp_path_factory.mktemp("faults-proxy"), s3.url)
    yield started
    stop(started.proc)


def serve_through(tmp: Path, s3: S3Endpoint, proxy: Proxy, name: str) -> Server:
    endpoint = proxy.url.replace("http://", f"http://{ENDPOINT_USER}:{ENDPOINT_PASSWORD}@")
    return start_server(
        tmp,
        s3.server_env(),
        "--s3-endpoint-url",
        endpoint,
        "--workers",
        str(WORKERS),
        "--s3-max-waiting",
        str(MAX_WAITING),
        "--s3-connect-timeout",
        str(CONNECT_TIMEOUT),
        "--s3-read-timeout",
        str(READ_TIMEOUT),
        "--s3-deadline",
        str(DEADLINE),
        name=name,
    )


@pytest.fixture(scope="module")
def server(
    s3: S3Endpoint, proxy: Proxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    started = serve_through(tmp_path_factory.mktemp("faults-server"), s3, proxy, "server")
    yield started
    stop(started.proc)


@pytest.fixture(autouse=True)
def store_answers(proxy: Proxy) -> Iterator[None]:
    """Every test starts and ends with a store that answers."""
    proxy.set("pass")
    yield
    proxy.set("pass")


@pytest.fixture(scope="module")
def models(server: Server, binary_data: dict[str, Any]) -> dict[str, Any]:
    """Two trained models: 'stalled' (whose object the tests stall) and 'other'."""
    h = dirhash("/moodledata/models/v1")
    assert server.train("stalled", h, binary_data["train"])["status"] == 0
    exported = server.get("export", {"uniqueid": "stalled", "dirhash": h})
    assert exported.status_code == 200
    import_model(server, "other", h, exported.content)
    return {"dirhash": h, "stalled": f"stalled/{h}", "other": f"other/{h}", "zip": exported.content}


def import_model(server: Server, uid: str, h: str, data: bytes) -> None:
    r = server.post(
        "import", {"uniqueid": uid, "dirhash": h}, {"importzip": ("m.zip", io.BytesIO(data))}
    )
    assert (r.status_code, r.text) == (200, "Ok")


def predict(server: Server, uid: str, h: str, path: str) -> requests.Response:
    with open(path, "rb") as f:
        return server.post(
            "prediction", {"uniqueid": uid, "dirhash": h}, {"dataset": f}, timeout=GENEROUS
        )


def train(server: Server, uid: str, h: str, path: str) -> requests.Response:
    with open(path, "rb") as f:
        return server.post(
            "training", {"uniqueid": uid, "dirhash": h}, {"dataset": f}, timeout=GENEROUS
        )


def history(s3: S3Endpoint, key: str) -> dict[str, Any]:
    """The training history recorded in the stored model (read from moto directly)."""
    with (
        zipfile.ZipFile(io.BytesIO(s3.get(key))) as archive,
        np.load(io.BytesIO(archive.read("model.npz")), allow_pickle=False) as npz,
    ):
        return dict(json.loads(str(npz["meta"]))["history"])


def assert_unavailable(r: requests.Response, *words: str) -> str:
    """A 503 that says, in Moodle's terms, that the store failed; nothing internal."""
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == str(DEADLINE)
    answer = r.json()
    assert answer["status"] == 1
    text = " ".join(answer["info"])
    for word in words:
        assert word in text
    assert_nothing_internal(r.text)
    return text


def assert_nothing_internal(text: str) -> None:
    """No endpoint URL, bucket, key, list query or credentials in what Moodle gets."""
    for internal in (HOST, "http://", BUCKET, "list-type", ENDPOINT_USER, ENDPOINT_PASSWORD):
        assert internal not in text
    assert "/" not in text.replace("S3", "")  # no UNIQUEID/DIRHASH key either


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + GENEROUS
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# --------------------------------------------------------------------------
# A store that never answers


def test_a_stalled_model_leaves_version_and_the_other_models_served(
    server, proxy, models, binary_data
):
    h = models["dirhash"]
    mark = len(proxy.log())
    proxy.set("pass", {"match": f"^GET /{BUCKET}/{models['stalled']}", "mode": "hang"})
    with concurrent.futures.ThreadPoolExecutor(WORKERS + 2) as pool:
        stalled = [
            pool.submit(predict, server, "stalled", h, binary_data["predict"])
            for _ in range(WORKERS + 2)
        ]
        wait_until(lambda: proxy.seen("GET", models["stalled"], mark), "no GET reached the store")
        # Meanwhile: the server answers what does not wait on that object.
        assert requests.get(f"{server.url}/version", timeout=GENEROUS).status_code == 200
        other = predict(server, "other", h, binary_data["predict"])
        assert other.status_code == 200 and other.json()["status"] == 0
        answers = [f.result() for f in stalled]

    texts = [assert_unavailable(r) for r in answers]
    # The first waited for the store until the deadline; the rest found no place.
    assert any("did not answer in time" in t for t in texts)
    assert any("Too many requests are waiting" in t for t in texts)
    assert len(proxy.seen("GET", models["stalled"], mark)) < len(answers)

    proxy.set("pass")
    assert predict(server, "stalled", h, binary_data["predict"]).json() == other.json()


def test_a_store_that_never_answers_gets_every_request_answered(server, proxy, models, binary_data):
    h = models["dirhash"]
    m = {"uniqueid": "stalled", "dirhash": h}
    before = predict(server, "stalled", h, binary_data["predict"]).json()
    mark = len(proxy.log())
    proxy.set("hang")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        asked = {
            "prediction": pool.submit(predict, server, "stalled", h, binary_data["predict"]),
            "training": pool.submit(train, server, "other", h, binary_data["train"]),
            "export": pool.submit(server.get, "export", m, timeout=GENEROUS),
            "deletemodel": pool.submit(
                server.post, "deletemodel", {"uniqueid": "stalled"}, timeout=GENEROUS
            ),
        }
        wait_until(lambda: len(proxy.log(mark)) >= 4, "the requests did not reach the store")
        assert requests.get(f"{server.url}/version", timeout=GENEROUS).status_code == 200
        answers = {name: f.result() for name, f in asked.items()}
    for name, r in answers.items():
        assert_unavailable(r, "did not answer in time" if name != "deletemodel" else "again")

    proxy.set("pass")  # nothing changed, nothing was deleted
    assert predict(server, "stalled", h, binary_data["predict"]).json() == before
    assert predict(server, "other", h, binary_data["predict"]).json() == before


def test_a_model_cut_in_half_is_fetched_again(server, s3, proxy, models, binary_data):
    h = models["dirhash"]
    # A copy the server never saw: it downloads it, and the first download is cut.
    s3.client.copy_object(
        Bucket=BUCKET, Key=f"copied/{h}", CopySource={"Bucket": BUCKET, "Key": models["other"]}
    )
    proxy.set("pass", {"match": f"^GET /{BUCKET}/copied/", "mode": "cut", "times": 1})
    r = predict(server, "copied", h, binary_data["predict"])
    assert r.status_code == 200
    assert r.json() == predict(server, "other", h, binary_data["predict"]).json()
    assert [e["mode"] for e in proxy.seen("GET", f"copied/{h}")][:2] == ["cut", "pass"]


# --------------------------------------------------------------------------
# Writes: applied once, and the answer says what happened


def test_a_lost_answer_to_an_applied_put_trains_once(server, s3, proxy, binary_data):
    h = dirhash("/moodledata/models/lost/v1")
    key = f"lost/{h}"
    put = f"^PUT /{BUCKET}/{key}"
    mark = len(proxy.log())
    # A first training: the answers to the claim and to the model are both lost.
    lose, keep = (
        {"match": put, "mode": "apply-then-close", "times": 1},
        {"match": put, "mode": "pass", "times": 1},
    )
    proxy.set("pass", lose, keep, dict(lose))  # the 1st and the 3rd PUT
    r = train(server, "lost", h, binary_data["train"])
    assert (r.status_code, r.json()) == (200, {"status": 0, "info": []})
    assert history(s3, key)["trainings"] == 1
    # Each write was applied, its answer lost; its repeat found it there (412).
    assert [(e["mode"], e["status"]) for e in proxy.seen("PUT", key, mark)] == [
        ("apply-then-close", 200),
        ("pass", 412),
        ("apply-then-close", 200),
        ("pass", 412),
    ]

    # An answer that never comes (the store froze after applying it).
    proxy.set("pass", {"match": put, "mode": "apply-then-hang", "times": 1})
    assert train(server, "lost", h, binary_data["train"]).json() == {"status": 0, "info": []}
    assert history(s3, key)["trainings"] == 2

    # Throttled twice (503 SlowDown): tried again, stored once.
    proxy.set("pass", {"match": put, "mode": "503", "times": 2})
    assert train(server, "lost", h, binary_data["train"]).json() == {"status": 0, "info": []}
    assert history(s3, key)["trainings"] == 3
    assert "changed on another server" not in server.log_text()


@pytest.mark.parametrize(
    "fault, stored",
    [("apply-then-close", True), ("reset", False), ("503", False)],
    ids=["applied-then-gone", "sent-then-gone", "refused-then-gone"],
)
def test_the_store_gone_during_a_commit(server, s3, proxy, models, binary_data, fault, stored):
    uid = f"gone-{fault}"
    h = dirhash(f"/moodledata/models/{uid}/v1")
    key = f"{uid}/{h}"
    import_model(server, uid, h, models["zip"])
    before = history(s3, key)["trainings"]

    proxy.set("pass", {"match": f"^PUT /{BUCKET}/{key}", "mode": fault, "then": "refuse"})
    r = train(server, uid, h, binary_data["train"])
    after = history(s3, key)["trainings"]
    if fault == "503":  # surely turned away: the answer says it was not stored
        assert_unavailable(r, "was not stored")
        assert after == before
    else:  # sent, and no answer: whether it was stored is unknown, and said so
        assert_unavailable(r, "whether it was stored is unknown")
        assert after == before + int(stored)

    # The next request of the model finds out, and logs it.
    proxy.set("pass")
    assert predict(server, uid, h, binary_data["predict"]).json()["status"] == 0
    if fault != "503":
        outcome = "was stored after all" if stored else "was not stored"
        assert f"{key}: the change whose outcome was unknown" in server.log_text()
        assert re.search(rf"{key}: the change whose outcome .* {outcome}", server.log_text())


def test_a_refused_first_training_leaves_no_empty_model(server, s3, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("this is not,a Moodle dataset\n")
    h = dirhash("/moodledata/models/refused/v1")
    r = train(server, "refused", h, str(bad))
    assert r.status_code == 200 and r.json()["status"] == 1
    assert s3.keys("refused/") == []


# --------------------------------------------------------------------------
# What Moodle and the log see


def test_a_store_refusing_connections_is_answered_in_moodles_terms(
    server, proxy, models, binary_data
):
    h = models["dirhash"]
    m = {"uniqueid": "other", "dirhash": h}
    exported = server.get("export", m).content
    proxy.set("refuse")
    with concurrent.futures.ThreadPoolExecutor(MAX_WAITING) as pool:
        reads = [
            pool.submit(predict, server, "other", h, binary_data["predict"]),
            pool.submit(train, server, "other", h, binary_data["train"]),
            pool.submit(server.get, "export", {**m, "uniqueid": "stalled"}, timeout=GENEROUS),
            pool.submit(server.get, "evaluationlog", {**m, "runid": "1"}, timeout=GENEROUS),
        ]
        for r in [f.result() for f in reads]:
            assert_unavailable(r, "did not answer in time")
        imported = pool.submit(
            server.post,
            "import",
            {**m, "uniqueid": "imported"},
            {"importzip": ("m.zip", io.BytesIO(exported))},
            timeout=GENEROUS,
        )
        deleted = pool.submit(server.post, "deletemodel", {"uniqueid": "other"}, timeout=GENEROUS)
        assert_unavailable(imported.result(), "did not answer in time")
        assert_unavailable(deleted.result(), "Deleting it again is safe")
    # The details are in the server's log, with the endpoint's credentials masked.
    log = server.log_text()
    assert "S3 GetObject of other/" in log and "Could not connect to the endpoint URL" in log
    assert f"http://***@{HOST}" in log
    assert ENDPOINT_PASSWORD not in log and ENDPOINT_USER not in log


def test_a_huge_uniqueid_gets_a_short_answer_and_short_log_lines(server, binary_data):
    huge = "x" * 1_000_000  # under the form's 1 MiB field limit
    before = len(server.log_text())
    r = predict(server, huge, "h", binary_data["predict"])
    assert len(r.content) < 2000
    assert_nothing_internal(r.text)
    assert all(len(line) < 2000 for line in server.log_text()[before:].splitlines())


def test_a_huge_uniqueid_is_refused_in_s3_mode(server, binary_data):
    r = predict(server, "x" * 1_000_000, "h", binary_data["predict"])
    assert r.status_code == 400 and len(r.content) < 2000


def test_the_stop_line_counts_every_http_request(s3, proxy, tmp_path, binary_data):
    server = serve_through(tmp_path, s3, proxy, "counted")
    try:
        get = f"^GET /{BUCKET}/counted/"
        proxy.set(
            "pass",
            {"match": get, "mode": "503", "times": 1},
            {"match": get, "mode": "hang", "times": 1},
        )
        r = predict(server, "counted", "h", binary_data["predict"])
        assert r.json()["status"] == 2  # asked thrice: 503, no answer, "no such object"
    finally:
        stop(server.proc)
    line = re.search(r"S3 requests: (.*)", server.log_text())
    assert line is not None
    counts = dict(item.split("=") for item in line[1].split(", "))
    assert counts["GetObject 503"] == "1"
    assert counts["GetObject timeout"] == "1"
    assert counts["GetObject 404"] == "1"
    assert counts["PutObject 412"] == "1"  # the start-up check of conditional writes
