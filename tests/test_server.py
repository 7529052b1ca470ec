"""Server mode against a real `mlbackend serve` process, through a real HTTP
client on a loopback socket: what Moodle's mlbackend_python sees."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers.run import backend_env
from helpers.servers import (
    PASSWORD,
    USER,
    Server,
    dirhash,
    files_under,
    make_zip,
    start_server,
    stop,
    wait_for_log,
)

from mlbackend import reported_version
from mlbackend.server import auth

MAX_UPLOAD_MB = 1
LEGACY = ("legacy", "old-pa$$word")
MODERN = ("modern", "new pässword")

GET_ENDPOINTS = ["evaluationlog", "export"]
POST_ENDPOINTS = ["training", "prediction", "evaluation", "import", "deletemodel"]


def users_value() -> str:
    salt = "da243a51bce11bf9083d78da99a2544b"
    legacy = f"{LEGACY[0]}:sha256:{salt}:" + hashlib.sha256((salt + LEGACY[1]).encode()).hexdigest()
    modern = auth.make_entry(*MODERN, iterations=20_000)
    return ",".join([f"{USER}:{PASSWORD}", legacy, modern])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("server")
    srv = start_server(
        tmp,
        {
            "MOODLE_MLBACKEND_PYTHON_USERS": users_value(),
            "MOODLE_MLBACKEND_PYTHON_DIR": str(tmp / "models"),
        },
        "--max-upload-mb",
        str(MAX_UPLOAD_MB),
        "--max-unzipped-mb",
        "1",
        "--workers",
        "6",
    )
    yield srv
    stop(srv.proc)


@pytest.fixture(scope="module")
def exported_model(server: Server, binary_data: dict[str, Any]) -> bytes:
    """model.npz of a model trained once, for the import tests."""
    source = ids("exportsource")
    server.train(source["uniqueid"], source["dirhash"], binary_data["train"])
    r = server.get("export", source)
    assert r.status_code == 200
    server.post("deletemodel", {"uniqueid": source["uniqueid"]})
    return zipfile.ZipFile(io.BytesIO(r.content)).read("model.npz")


def ids(name: str) -> dict[str, str]:
    return {"uniqueid": name, "dirhash": dirhash(f"/moodledata/models/{name}/v1")}


def assert_no_temp_files(server: Server) -> None:
    assert files_under(server.tempdir) == []
    assert list(server.tempdir.iterdir()) == []


# ---------------------------------------------------------------------------
# Authentication and methods


def test_version_needs_no_auth(server):
    r = server.get("version", auth=None)
    assert r.status_code == 200
    assert r.text.strip() == reported_version()


@pytest.mark.parametrize(
    "creds",
    [None, (USER, "wrong"), ("nosuchuser", PASSWORD), (LEGACY[0], "wrong"), (MODERN[0], "wrong")],
    ids=["missing", "wrong-password", "unknown-user", "wrong-legacy", "wrong-modern"],
)
def test_bad_credentials_get_401_before_any_work(server, creds, binary_data):
    for endpoint in GET_ENDPOINTS:
        r = server.get(endpoint, {**ids("auth"), "runid": "1"}, auth=creds)
        assert r.status_code == 401, endpoint
        assert r.headers["WWW-Authenticate"].startswith("Basic")
    for endpoint in POST_ENDPOINTS:
        with open(binary_data["train"], "rb") as f:
            r = server.post(endpoint, ids("auth"), {"dataset": f}, auth=creds)
        assert r.status_code == 401, endpoint
    # nothing was trained, written or left behind
    assert server.storage is not None
    assert not (server.storage / "auth").exists()
    assert_no_temp_files(server)


def test_a_non_basic_authorization_is_401(server):
    r = requests.get(
        f"{server.url}/export",
        params=ids("auth"),
        headers={"Authorization": "Bearer abc"},
        timeout=30,
    )
    assert r.status_code == 401


@pytest.mark.parametrize(
    "creds", [(USER, PASSWORD), LEGACY, MODERN], ids=["plain", "old-sha256", "pbkdf2"]
)
def test_every_kind_of_user_entry_logs_in(server, creds):
    for _ in range(2):  # the second pbkdf2 check comes from the verified cache
        r = server.get("evaluationlog", {**ids("nobody"), "runid": "1"}, auth=creds)
        assert r.status_code == 200


# ---------------------------------------------------------------------------
# The life of a model


def test_a_model_over_a_real_socket(server, binary_data):
    """Train, predict, export, import and delete through HTTP on loopback:
    the routes themselves are tested in process (tests/test_routes.py,
    tests/test_storage_contract.py); this is the same flow through waitress,
    the gate and a real client."""
    a, b = ids("life"), ids("lifecopy")
    assert server.train(a["uniqueid"], a["dirhash"], binary_data["train"]) == {
        "status": 0,
        "info": [],
    }
    first = server.predict(a["uniqueid"], a["dirhash"], binary_data["predict"])
    assert first["status"] == 0 and len(first["predictions"]) == len(binary_data["answers"])
    r = server.get("export", a)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    r = server.post("import", b, {"importzip": ("import.zip", io.BytesIO(r.content))})
    assert (r.status_code, r.text) == (200, "Ok")
    assert server.predict(b["uniqueid"], b["dirhash"], binary_data["predict"]) == first
    for model in (a, b):
        r = server.post("deletemodel", {"uniqueid": model["uniqueid"]})
        assert (r.status_code, r.text) == (200, "Ok")
        assert server.get("export", model).status_code == 503
    assert server.storage is not None
    assert not (server.storage / a["uniqueid"]).exists()
    assert_no_temp_files(server)


# ---------------------------------------------------------------------------
# Limits and safety


def test_oversized_upload_is_413_and_leaves_nothing(server):
    big = io.BytesIO(b"0" * (MAX_UPLOAD_MB * (1 << 20) + 200_000))
    r = server.post("training", ids("big"), {"dataset": ("big.csv", big)})
    assert r.status_code == 413
    assert r.json()["status"] == 1
    big.seek(0)
    r = server.post("training", ids("big"), {"dataset": ("big.csv", big)}, auth=None)
    assert r.status_code == 401  # authentication comes first
    assert server.storage is not None
    assert not (server.storage / "big").exists()
    assert_no_temp_files(server)


# ---------------------------------------------------------------------------
# Logs and output


def test_one_access_log_line_per_request(server):
    line = '"GET /version" 200'
    before = server.log_text().count(line)
    for _ in range(3):
        server.get("version")
    # A line is written once its answer has gone out: on a busy machine the
    # client can read the answer first. Wait for the lines, then for strays.
    wait_for_log(server, line, before + 3)
    time.sleep(0.2)
    assert server.log_text().count(line) == before + 3
    assert all(PASSWORD not in ln for ln in server.log_text().splitlines())


def test_stdout_stays_empty_and_tensorflow_is_quiet(server):
    # runs after the trainings above: TensorFlow was imported and used
    assert server.stdout.read_text() == ""
    log = server.log_text()
    for noise in ("oneDNN", "cuda", "tensorflow/core", "WARNING: All log messages"):
        assert noise not in log


# ---------------------------------------------------------------------------
# Starting


def test_refuses_to_start_without_users(tmp_path):
    env = backend_env(
        {"MOODLE_MLBACKEND_PYTHON_USERS": "", "MOODLE_MLBACKEND_PYTHON_DIR": str(tmp_path)}
    )
    p = subprocess.run(
        [sys.executable, "-m", "mlbackend", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 78  # EX_CONFIG: systemd does not restart it for ever
    answer = json.loads(p.stdout.strip().splitlines()[-1])
    assert "no users" in answer["info"][0]
    assert "mlbackend passwd" in answer["info"][0]


def test_light_commands_do_not_load_the_server_stack():
    code = (
        "import sys\nfrom mlbackend.cli import main\n"
        "for argv in (['version'], ['serve', '--help'], ['passwd', '--help'], ['--help']):\n"
        "    main(argv)\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'boto3', 'werkzeug', 'waitress', 'flask')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], env=backend_env(), capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    assert "HEAVY []" in p.stdout


def test_a_server_process_keeps_its_models_in_s3(moto, tmp_path, binary_data):
    """The S3 store through the real program: its environment and options,
    an import and a prediction over HTTP, the object in the bucket, the
    request count logged at stop. The store's behaviour, trainings included,
    is tested in process (tests/test_storage_contract.py,
    tests/test_server_replicas.py)."""
    from helpers.models import model

    from mlbackend.model.format import write_npz

    npz = io.BytesIO()
    write_npz(npz, model(nfeatures=20, hidden=(8,)))
    bucket = moto.new_bucket()
    env = moto.server_env(MOODLE_MLBACKEND_PYTHON_S3_BUCKET_NAME=bucket)
    srv = start_server(tmp_path, env, "--s3-endpoint-url", moto.url)
    m = ids("ins3")
    try:
        archive = make_zip([("model.npz", npz.getvalue())])
        r = srv.post("import", m, {"importzip": ("import.zip", io.BytesIO(archive))})
        assert (r.status_code, r.text) == (200, "Ok")
        assert srv.predict(m["uniqueid"], m["dirhash"], binary_data["predict"])["status"] == 0
        listed = moto.client.list_objects_v2(Bucket=bucket)["Contents"]
        assert [o["Key"] for o in listed] == [f"{m['uniqueid']}/{m['dirhash']}"]
    finally:
        stop(srv.proc)
    assert "S3 requests: " in srv.log_text() and "PutObject" in srv.log_text()


def test_refuses_to_start_without_the_bucket(moto, tmp_path):
    env = moto.server_env(MOODLE_MLBACKEND_PYTHON_S3_BUCKET_NAME="no-such-bucket")
    with pytest.raises(RuntimeError, match="no-such-bucket"):
        start_server(Path(tmp_path), env, "--s3-endpoint-url", moto.url)
