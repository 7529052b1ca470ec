"""Server mode under hostile input: crafted datasets through /training and
/prediction, crafted zips through /import, clients that hang up mid-upload,
and no endpoint (whatever the method) without valid credentials.

The property-based tests run a few examples under `make test`, many under
`make fuzz` (see hostile.py).
"""
from __future__ import annotations

import base64
import io
import json
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

from hostile import any_bytes, check_predictions, datasets, deflated_npz, examples
from mlbackend.server import app as server_app
from mlbackend.server.auth import Users, parse_users
from mlbackend.server.config import ServerConfig
from mlbackend.server.local import LocalStorage
from serverutil import (HOST, PASSWORD, USER, Server, files_under, make_zip, start_server,
                        stop)

HEAD = 'nfeatures,targetclasses,targettype\n3,"[0,1]",discrete\n'
MODEL = {"uniqueid": "hostile", "dirhash": "v1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("hostile-server")
    srv = start_server(tmp, {"MOODLE_MLBACKEND_PYTHON_USERS": f"{USER}:{PASSWORD}",
                             "MOODLE_MLBACKEND_PYTHON_DIR": str(tmp / "models")},
                       "--max-upload-mb", "8", "--max-unzipped-mb", "8", "--workers", "4")
    yield srv
    stop(srv.proc)


@pytest.fixture(scope="module")
def trained(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """MODEL trained on 3 features; a good prediction file and its answer."""
    tmp = tmp_path_factory.mktemp("hostile-data")
    rng = np.random.default_rng(5)
    X = np.round(rng.uniform(-1, 1, (60, 3)), 2)
    y = (X[:, 0] - X[:, 2] > 0).astype(int)
    train = tmp / "train.csv"
    train.write_text(HEAD + "f1,f2,f3,target\n" +
                     "".join(f"{a},{b},{c},{t}\n" for (a, b, c), t in zip(X, y)))
    predict = tmp / "predict.csv"
    predict.write_text(HEAD + "sampleid,f1,f2,f3\n" +
                       "".join(f"s{i},{a},{b},{c}\n" for i, (a, b, c) in enumerate(X[:10])))
    assert server.train(MODEL["uniqueid"], MODEL["dirhash"], str(train))["status"] == 0
    with open(server.storage / "hostile" / "v1" / "classifier" / "model.npz", "rb") as f:
        exported = f.read()
    return {"predict": str(predict), "model.npz": exported}


def json_answer(r: Any, allowed: tuple[int, ...]) -> dict[str, Any]:
    assert r.headers["Content-Type"].startswith("application/json"), (r.status_code, r.text)
    answer = r.json()
    assert answer["status"] in allowed, answer
    assert isinstance(answer["info"], list) and all(isinstance(i, str) for i in answer["info"])
    if answer["status"] != 0:
        assert answer["info"] and len(answer["info"][0]) <= 2000
    return answer


def still_predicts(server: Server, trained: dict[str, Any]) -> None:
    answer = server.predict(MODEL["uniqueid"], MODEL["dirhash"], trained["predict"])
    assert answer["status"] == 0, answer
    check_predictions(answer, 2, ["0", "1"])


def no_temp_files(server: Server) -> None:
    """The request's files are gone once it is answered (the access log line is
    written after the answer, so allow the worker a moment to finish)."""
    for _ in range(200):
        if not list(server.tempdir.iterdir()):
            return
        time.sleep(0.05)
    assert list(server.tempdir.iterdir()) == []


# ---------------------------------------------------------------------------
# Crafted datasets


@settings(max_examples=examples(15, 1000))
@given(data=st.one_of(datasets(features=st.just(3)), datasets(), any_bytes()))
def test_training_and_prediction_answer_every_dataset(server, trained, data):
    for endpoint, allowed in (("training", (0, 1, 8)), ("prediction", (0, 1))):
        r = server.post(endpoint, MODEL, {"dataset": ("d.csv", io.BytesIO(data))})
        assert r.status_code == 200, (r.status_code, r.text)
        answer = json_answer(r, allowed)
        event(f"{endpoint} status {answer['status']}")
        if endpoint == "prediction" and answer["status"] == 0:
            check_predictions(answer, 2, ["0", "1"])
    still_predicts(server, trained)
    no_temp_files(server)


# ---------------------------------------------------------------------------
# Crafted zips


def zips(model_npz: bytes) -> st.SearchStrategy[bytes]:
    """Zip files for /import: not zips, zips of junk, damaged real models,
    old-format files holding junk, the real model beside junk."""
    junk = st.binary(max_size=300)

    def damaged(data: bytes, cut: int, flip: int) -> bytes:
        cut %= len(data) + 1
        out = bytearray(data[:cut] if cut else data)
        if out:
            out[flip % len(out)] ^= 0xFF
        return bytes(out)

    member = st.sampled_from(["model.npz", "classifier/model.npz", "model.json",
                              "classifier.pkl", "model.ckpt/variables/variables.index",
                              "readme.txt", "model.npz/", "a/../model.npz"])
    return st.one_of(
        junk,
        st.builds(lambda name, data: make_zip([(name, data)]), member, junk),
        st.builds(lambda cut, flip: make_zip([("model.npz", damaged(model_npz, cut, flip))]),
                  st.integers(0, 1 << 16), st.integers(0, 1 << 16)),
        st.builds(lambda text: make_zip([("model.json", text.encode())]),
                  st.sampled_from(['{"n_features": 1000000000000, "n_classes": 2}',
                                   '{"n_features": -1}', "[]", "null", "{",
                                   '{"n_features": 3, "n_classes": 2, "n_hidden": 1e9}'])),
        st.builds(lambda data: make_zip([("model.npz", model_npz), ("extra.bin", data)]), junk),
    )


@settings(max_examples=examples(25, 400))
@given(data=st.data())
def test_import_answers_every_zip(server, trained, data):
    archive = data.draw(zips(trained["model.npz"]), label="archive")
    target = {"uniqueid": "hostileimport", "dirhash": "v1"}
    r = server.post("import", target, {"importzip": ("m.zip", io.BytesIO(archive))})
    assert r.status_code in (200, 400), (r.status_code, r.text)
    if r.status_code == 200:
        assert r.text == "Ok"
        event("imported")
    else:
        answer = json_answer(r, (1,))
        event("refused: " + answer["info"][0][:40])
    no_temp_files(server)
    still_predicts(server, trained)


def test_import_of_a_model_that_unpacks_to_gigabytes_is_refused(server, trained, tmp_path):
    npz = tmp_path / "model.npz"
    deflated_npz(npz, "layer0_kernel.npy", 300)
    archive = make_zip([("model.npz", npz.read_bytes())])
    r = server.post("import", MODEL, {"importzip": ("m.zip", io.BytesIO(archive))})
    assert r.status_code == 400
    assert "unpacks to" in json_answer(r, (1,))["info"][0]
    still_predicts(server, trained)
    no_temp_files(server)


# ---------------------------------------------------------------------------
# Clients that hang up


def raw_request(server: Server, body: bytes, declared: int, headers: str = "") -> socket.socket:
    """Open a connection and send a multipart POST /training declaring
    `declared` bytes of body, of which only `body` is sent."""
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection((HOST, port), timeout=60)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    head = (f"POST /training HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Basic {token}\r\n"
            f"Content-Type: multipart/form-data; boundary=XyZ\r\n"
            f"Content-Length: {declared}\r\n{headers}\r\n")
    sock.sendall(head.encode() + body)
    return sock


def multipart(dataset: bytes) -> bytes:
    fields = "".join(f'--XyZ\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                     for k, v in MODEL.items())
    return (fields + '--XyZ\r\nContent-Disposition: form-data; name="dataset"; '
            'filename="d.csv"\r\nContent-Type: text/csv\r\n\r\n').encode() + dataset + \
        b"\r\n--XyZ--\r\n"


def open_files(server: Server) -> int:
    """File descriptors the server holds: sockets, and temporary files (waitress
    and Werkzeug spool large bodies into unnamed ones, invisible on disk)."""
    return len(list(Path(f"/proc/{server.proc.pid}/fd").iterdir()))


def eventually(condition: Any, what: str) -> None:
    """Poll until true: the server finishes with a hung-up client on its own time."""
    for _ in range(1200):
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


def test_clients_that_hang_up_mid_upload(server, trained):
    model_file = server.storage / "hostile" / "v1" / "classifier" / "model.npz"
    before = json.loads(str(np.load(io.BytesIO(model_file.read_bytes()))["meta"]))["history"]
    files_before = open_files(server)
    answered = server.log_text().count('"POST /training"')
    body = multipart((HEAD + "f1,f2,f3,target\n" + "1,0,1,0\n0,1,0,1\n" * 50_000).encode())
    for sent in (0, 1000, len(body) // 2, len(body) - 10):
        raw_request(server, body[:sent], len(body)).close()  # gone before the body ends
    # one that resets the connection mid-upload
    sock = raw_request(server, body[:len(body) // 3], len(body))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    sock.close()
    # one that sends everything, then leaves before the answer
    raw_request(server, body, len(body)).close()

    assert server.get("version", auth=None).status_code == 200
    still_predicts(server, trained)
    # Only the complete upload reached the application (and trained, from the
    # model before); the cut ones were dropped with their spooled bodies.
    eventually(lambda: server.log_text().count('"POST /training"') == answered + 1,
               "the complete upload was answered")
    eventually(lambda: open_files(server) <= files_before, "the server closed every file")
    after = json.loads(str(np.load(io.BytesIO(model_file.read_bytes()))["meta"]))["history"]
    assert after["trainings"] == before["trainings"] + 1
    assert after["rows_seen"] == before["rows_seen"] + 100_000
    no_temp_files(server)
    assert server.proc.poll() is None
    assert "Traceback" not in server.log_text()
    still_predicts(server, trained)


# ---------------------------------------------------------------------------
# Credentials: every endpoint, every method


def test_every_endpoint_and_method_needs_credentials(tmp_path):
    """Walks the application's own routes (so a new endpoint cannot be
    forgotten) with every method and bad credentials: 401 before anything
    runs, except /version. (tests/test_server.py checks the right methods
    with every kind of bad credentials against a running server.)"""
    config = ServerConfig(storage_dir=str(tmp_path / "models"))
    users = Users(parse_users(f"{USER}:{PASSWORD}"))
    application = server_app.MoodleApp(config, LocalStorage(config.storage_dir), users)
    client = Client(application)
    bad = [None, "Basic " + base64.b64encode(f"{USER}:wrong".encode()).decode(),
           "Basic " + base64.b64encode(b"nobody:" + PASSWORD.encode()).decode(),
           "Basic !!!", "Bearer token", "Basic " + base64.b64encode(b"no colon").decode()]
    rules = [rule.rule for rule in application.url_map.iter_rules()]
    assert len(rules) >= 8  # the contract's eight, and whatever comes later
    for path in rules + ["/nothing", "/training/", "/../version/x"]:
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
            for header in bad:
                headers = {"Authorization": header} if header else {}
                r = client.open(path, method=method, headers=headers,
                                data={"uniqueid": "x", "dirhash": "y"})
                if path == "/version":
                    assert r.status_code in (200, 405), (path, method)
                else:
                    assert r.status_code == 401, (path, method, header, r.status_code)
                    assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert files_under(tmp_path) == []
