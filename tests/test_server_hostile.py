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
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.hostile import any_bytes, check_predictions, datasets, deflated_npz, examples
from helpers.servers import (
    HOST,
    PASSWORD,
    USER,
    Server,
    eventually,
    files_under,
    local_env,
    make_zip,
    start_server,
    stop,
)
from hypothesis import event, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

from mlbackend.server import app as server_app
from mlbackend.server.auth import Users, parse_users
from mlbackend.server.config import ServerConfig
from mlbackend.server.local import LocalStorage

HEAD = 'nfeatures,targetclasses,targettype\n3,"[0,1]",discrete\n'
MODEL = {"uniqueid": "hostile", "dirhash": "v1"}


#: --header-timeout of the module's server (20 s by default): the test of
#: headers that never end waits that long.
HEADER_TIMEOUT = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("hostile-server")
    srv = start_server(
        tmp,
        local_env(tmp),
        "--max-upload-mb",
        "8",
        "--max-unzipped-mb",
        "8",
        "--workers",
        "4",
        "--header-timeout",
        str(HEADER_TIMEOUT),
    )
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
    train.write_text(
        HEAD + "f1,f2,f3,target\n" + "".join(f"{a},{b},{c},{t}\n" for (a, b, c), t in zip(X, y))
    )
    predict = tmp / "predict.csv"
    predict.write_text(
        HEAD
        + "sampleid,f1,f2,f3\n"
        + "".join(f"s{i},{a},{b},{c}\n" for i, (a, b, c) in enumerate(X[:10]))
    )
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

    member = st.sampled_from(
        [
            "model.npz",
            "classifier/model.npz",
            "model.json",
            "classifier.pkl",
            "model.ckpt/variables/variables.index",
            "readme.txt",
            "model.npz/",
            "a/../model.npz",
        ]
    )
    return st.one_of(
        junk,
        st.builds(lambda name, data: make_zip([(name, data)]), member, junk),
        st.builds(
            lambda cut, flip: make_zip([("model.npz", damaged(model_npz, cut, flip))]),
            st.integers(0, 1 << 16),
            st.integers(0, 1 << 16),
        ),
        st.builds(
            lambda text: make_zip([("model.json", text.encode())]),
            st.sampled_from(
                [
                    '{"n_features": 1000000000000, "n_classes": 2}',
                    '{"n_features": -1}',
                    "[]",
                    "null",
                    "{",
                    '{"n_features": 3, "n_classes": 2, "n_hidden": 1e9}',
                ]
            ),
        ),
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
    head = (
        f"POST /training HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Basic {token}\r\n"
        f"Content-Type: multipart/form-data; boundary=XyZ\r\n"
        f"Content-Length: {declared}\r\n{headers}\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def multipart(dataset: bytes) -> bytes:
    fields = "".join(
        f'--XyZ\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in MODEL.items()
    )
    return (
        (
            fields + '--XyZ\r\nContent-Disposition: form-data; name="dataset"; '
            'filename="d.csv"\r\nContent-Type: text/csv\r\n\r\n'
        ).encode()
        + dataset
        + b"\r\n--XyZ--\r\n"
    )


def open_files(server: Server) -> int:
    """File descriptors the server holds: sockets, and temporary files (waitress
    and Werkzeug spool large bodies into unnamed ones, invisible on disk)."""
    return len(list(Path(f"/proc/{server.proc.pid}/fd").iterdir()))


def test_clients_that_hang_up_mid_upload(server, trained):
    model_file = server.storage / "hostile" / "v1" / "classifier" / "model.npz"
    before = json.loads(str(np.load(io.BytesIO(model_file.read_bytes()))["meta"]))["history"]
    files_before = open_files(server)
    answered = server.log_text().count('"POST /training"')
    body = multipart((HEAD + "f1,f2,f3,target\n" + "1,0,1,0\n0,1,0,1\n" * 50_000).encode())
    for sent in (0, 1000, len(body) // 2, len(body) - 10):
        raw_request(server, body[:sent], len(body)).close()  # gone before the body ends
    # one that resets the connection mid-upload
    sock = raw_request(server, body[: len(body) // 3], len(body))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    sock.close()
    # one that sends everything, then leaves before the answer
    raw_request(server, body, len(body)).close()

    assert server.get("version", auth=None).status_code == 200
    still_predicts(server, trained)
    # Only the complete upload reached the application (and trained, from the
    # model before); the cut ones were dropped with their spooled bodies.
    eventually(
        lambda: server.log_text().count('"POST /training"') == answered + 1,
        "the complete upload was answered",
    )
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
    bad = [
        None,
        "Basic " + base64.b64encode(f"{USER}:wrong".encode()).decode(),
        "Basic " + base64.b64encode(b"nobody:" + PASSWORD.encode()).decode(),
        "Basic !!!",
        "Bearer token",
        "Basic " + base64.b64encode(b"no colon").decode(),
    ]
    rules = [rule.rule for rule in application.url_map.iter_rules()]
    assert len(rules) >= 8  # the contract's eight, and whatever comes later
    for path in rules + ["/nothing", "/training/", "/../version/x"]:
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
            for header in bad:
                headers = {"Authorization": header} if header else {}
                r = client.open(
                    path, method=method, headers=headers, data={"uniqueid": "x", "dirhash": "y"}
                )
                if path == "/version":
                    assert r.status_code in (200, 405), (path, method)
                else:
                    assert r.status_code == 401, (path, method, header, r.status_code)
                    assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert files_under(tmp_path) == []


# ---------------------------------------------------------------------------
# Before authentication (issue 12): the body is not read, failed logins are
# cheap, one client cannot take every connection


def send_head(server: Server, head: str, source: str = HOST) -> socket.socket:
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection((HOST, port), timeout=60, source_address=(source, 0))
    sock.sendall(head.encode())
    return sock


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def post_head(credentials: str | None, length: int) -> str:
    auth = (
        f"Authorization: Basic {base64.b64encode(credentials.encode()).decode()}\r\n"
        if credentials
        else ""
    )
    return (
        f"POST /training HTTP/1.1\r\nHost: {HOST}\r\n{auth}"
        "Content-Type: multipart/form-data; boundary=XyZ\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )


@pytest.mark.parametrize("credentials", [None, f"{USER}:wrong", "nobody:secret", "nocolon"])
def test_a_request_without_valid_credentials_is_answered_before_its_body(
    server, trained, credentials
):
    """Only the headers are sent, 7 MiB declared: the 401 comes anyway (a
    server waiting for the body would never answer), and the connection closes."""
    sock = send_head(server, post_head(credentials, 7 << 20))
    with sock:
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"www-authenticate: basic" in answer.lower()
    still_predicts(server, trained)
    no_temp_files(server)


@pytest.fixture(scope="module")
def pbkdf2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose user has a PBKDF2 entry: its first login is checked
    by the verifier thread while the request waits, body unread."""
    from mlbackend.server.auth import make_entry

    tmp = tmp_path_factory.mktemp("pbkdf2-server")
    users = f"{make_entry(USER, PASSWORD, 20_000)},{make_entry('second', PASSWORD, 20_000)}"
    srv = start_server(
        tmp,
        {
            "MOODLE_MLBACKEND_PYTHON_USERS": users,
            "MOODLE_MLBACKEND_PYTHON_DIR": str(tmp / "models"),
        },
        "--max-upload-mb",
        "8",
    )
    yield srv
    stop(srv.proc)


def test_a_slow_entry_is_checked_before_the_body_then_the_request_goes_on(pbkdf2_server, trained):
    """Wrong password: 401 with the body unsent. Right password, first time:
    the request waits for the check, then its body is read and answered."""
    sock = send_head(pbkdf2_server, post_head(f"{USER}:wrong", 7 << 20))
    with sock:
        assert read_response(sock).startswith(b"HTTP/1.1 401")
    for _ in range(2):  # checked, then remembered
        # A prediction of a model never trained: its body is read and answered
        # (status 2), without a training to wait for.
        answer = pbkdf2_server.predict("slow", "v1", trained["predict"])
        assert answer["status"] == 2, answer
    assert pbkdf2_server.proc.poll() is None


def test_one_client_cannot_take_every_connection(server, trained):
    """120 idle connections from one address: beyond the per-client limit
    they are closed at once, and another client is answered."""
    from mlbackend.server.gate import MAX_CONNECTIONS_PER_CLIENT

    socks = [send_head(server, "", source="127.0.0.2") for _ in range(120)]
    try:
        closed = 0
        for sock in socks[MAX_CONNECTIONS_PER_CLIENT:]:
            sock.settimeout(30)
            closed += sock.recv(1) == b""
        assert closed == 120 - MAX_CONNECTIONS_PER_CLIENT
        assert server.get("version", auth=None).status_code == 200
        still_predicts(server, trained)
    finally:
        for sock in socks:
            sock.close()


def test_headers_that_never_end_are_cut_off(server):
    """A client that sends a header line now and then is closed once its
    headers are overdue (waitress alone kept it for as long as it trickled):
    here after HEADER_TIMEOUT seconds (--header-timeout)."""
    sock = send_head(server, "GET /version HTTP/1.1\r\n")
    with sock:
        sock.settimeout(90)
        got = b""
        for _ in range(60):
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
            try:
                sock.settimeout(2)
                got = sock.recv(100)
                if got == b"":
                    break
            except TimeoutError:
                continue
            except ConnectionResetError:
                # Closed while a header line was on its way: the kernel
                # answers that line with a reset instead of an end of file.
                got = b""
                break
        assert got == b"", got
    assert server.get("version", auth=None).status_code == 200


@pytest.mark.parametrize("authenticated", [True, False], ids=["user", "refused"])
def test_a_path_with_line_breaks_writes_one_access_log_line(server, authenticated):
    """`%0A` in the path wrote a forged line; each request is one line, escaped,
    whether the application answers it or the gate refuses it."""
    port = int(server.url.rsplit(":", 1)[1])
    marker = f"deletemodel{int(authenticated)}"
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    auth = f"Authorization: Basic {token}\r\n" if authenticated else ""
    with socket.create_connection((HOST, port), timeout=60) as sock:
        sock.sendall(
            f"GET /x%0A127.0.0.1%20admin%20%22POST%20/{marker}%22%20200 HTTP/1.1\r\n"
            f"Host: x\r\n{auth}Connection: close\r\n\r\n".encode()
        )
        assert read_response(sock).startswith(b"HTTP/1.1 40")
    eventually(lambda: marker in server.log_text(), "the request was logged")
    lines = [line for line in server.log_text().splitlines() if marker in line]
    assert len(lines) == 1 and "/x\\x0a127.0.0.1\\x20admin" in lines[0], lines
    assert not any(line.startswith("127.0.0.1 admin") for line in server.log_text().splitlines())


# ---------------------------------------------------------------------------
# Uploads and answers that were unexpected errors (issue 12)


@pytest.mark.parametrize(
    "entries,words",
    [
        ([("a", b"1"), ("a/b", b"2")], "both a file and a directory"),
        ([("a/b", b"2"), ("a", b"1")], "both a file and a directory"),
        ([("model.npz", b"1"), ("model.npz", b"2")], "appears twice"),
        ([("x" * 300, b"1")], "too long or too deep"),
        ([("d/" * 2100 + "f", b"1")], "too long or too deep"),
    ],
)
def test_zips_that_cannot_be_extracted_are_refused(server, trained, entries, words):
    archive = make_zip(entries)
    r = server.post(
        "import",
        {"uniqueid": "zips", "dirhash": "v1"},
        {"importzip": ("m.zip", io.BytesIO(archive))},
    )
    assert r.status_code == 400, (r.status_code, r.text)
    assert words in json_answer(r, (1,))["info"][0]
    no_temp_files(server)
    still_predicts(server, trained)


def test_too_many_form_parts_get_the_right_413(server):
    fields = {f"f{i}": "x" for i in range(101)}
    r = server.post("training", {**MODEL, **fields}, {"dataset": ("d.csv", io.BytesIO(b"x"))})
    assert r.status_code == 413
    info = json_answer(r, (1,))["info"][0]
    assert "form parts" in info and "MiB, mlbackend serve" not in info


def test_absurd_niterations_is_refused(server, trained):
    with open(Path(trained["predict"]).parent / "train.csv", "rb") as f:
        r = server.post(
            "evaluation",
            {**MODEL, "minscore": "0.6", "maxdeviation": "0.02", "niterations": "1000000"},
            {"dataset": f},
        )
    assert r.status_code == 200
    assert "from 1 to 100" in json_answer(r, (1,))["info"][0]


def test_error_answers_do_not_show_the_servers_paths(server, trained):
    model = server.storage / "paths" / "v1" / "classifier"
    model.mkdir(parents=True)
    (model / "model.npz").write_bytes(b"PK\x03\x04 damaged")
    r = server.post(
        "prediction",
        {"uniqueid": "paths", "dirhash": "v1"},
        {"dataset": ("d.csv", open(trained["predict"], "rb"))},
    )
    info = json_answer(r, (1,))["info"][0]
    assert "paths/v1/classifier/model.npz" in info
    r2 = server.post("prediction", MODEL, {"dataset": ("d.csv", io.BytesIO(b"a,b\n1,2\n3,4\n"))})
    info2 = json_answer(r2, (1,))["info"][0]
    for text in (info, info2):
        assert str(server.storage) not in text and str(server.tempdir) not in text, text
        assert "/tmp" not in text and "mlbackend-req" not in text, text


def test_request_directories_of_a_dead_server_are_removed_at_start(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tempdir = tmp_path / "server-tmp"
    stale = tempdir / f"mlbackend-req-{dead.pid}-abc"
    live = tempdir / f"mlbackend-req-{os.getpid()}-def"  # this test process: running
    for d in (stale, live):
        d.mkdir(parents=True)
        (d / "dataset").write_text("left behind")
    env = {
        "MOODLE_MLBACKEND_PYTHON_USERS": f"{USER}:{PASSWORD}",
        "MOODLE_MLBACKEND_PYTHON_DIR": str(tmp_path / "models"),
        "MOODLE_MLBACKEND_TEMPDIR": str(tempdir),
    }
    srv = start_server(tmp_path, env, name="cleaner")
    try:
        assert srv.get("version", auth=None).status_code == 200
        assert not stale.exists() and live.exists()
    finally:
        stop(srv.proc)


def test_no_100_continue_before_the_credentials_are_checked(server, pbkdf2_server, trained):
    """curl (Moodle's PHP) asks `Expect: 100-continue` before a large body:
    a wrong password gets the 401, never an invitation to send the body; a
    right one (known, or checked while the request waits) gets it."""
    for srv in (server, pbkdf2_server):
        head = post_head(f"{USER}:wrong", 7 << 20).replace(
            "\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n"
        )
        with send_head(srv, head) as sock:
            assert read_response(sock).startswith(b"HTTP/1.1 401")
    with open(Path(trained["predict"]).parent / "train.csv", "rb") as f:
        body = multipart(f.read())
    # known good at start-up; checked while the request waits (only this
    # test uses "second"); a wrong password checked while it waits
    for srv, user, password in (
        (server, USER, PASSWORD),
        (pbkdf2_server, "second", PASSWORD),
        (pbkdf2_server, "second", "wrong"),
    ):
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        head = (
            f"POST /prediction HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Basic {token}\r\n"
            "Content-Type: multipart/form-data; boundary=XyZ\r\nExpect: 100-continue\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        with send_head(srv, head) as sock:
            first = sock.recv(100)
            if password == "wrong":
                assert first.startswith(b"HTTP/1.1 401"), first
                continue
            assert first.startswith(b"HTTP/1.1 100 Continue"), first
            sock.sendall(body)
            answer = first + read_response(sock)
        assert b"HTTP/1.1 200" in answer, answer[:300]
