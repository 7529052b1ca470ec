"""Server mode against a real `mlbackend serve` process, through a real HTTP
client on a loopback socket: what Moodle's mlbackend_python sees."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import backend_env
from serverutil import (
    PASSWORD,
    USER,
    Server,
    dirhash,
    files_under,
    make_zip,
    start_server,
    stop,
    zip_names,
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


@pytest.mark.parametrize(
    "method, endpoint",
    [
        ("post", "version"),
        ("get", "training"),
        ("get", "prediction"),
        ("get", "evaluation"),
        ("post", "evaluationlog"),
        ("post", "export"),
        ("get", "import"),
        ("get", "deletemodel"),
        ("put", "training"),
        ("delete", "deletemodel"),
    ],
)
def test_wrong_method_is_405(server, method, endpoint):
    r = requests.request(method, f"{server.url}/{endpoint}", auth=server.auth, timeout=30)
    assert r.status_code == 405
    assert r.headers.get("Allow")


def test_unknown_endpoint_is_404(server):
    assert server.get("nothing").status_code == 404


# ---------------------------------------------------------------------------
# The life of a model


def test_model_life_cycle(server, binary_data):
    a, b = ids("life"), ids("lifecopy")
    assert server.train(a["uniqueid"], a["dirhash"], binary_data["train"]) == {
        "status": 0,
        "info": [],
    }

    first = server.predict(a["uniqueid"], a["dirhash"], binary_data["predict"])
    assert first["status"] == 0
    rows = first["predictions"]
    answers = binary_data["answers"]
    assert [r[0] for r in rows] == list(answers)
    assert all(isinstance(x, str) for r in rows for x in r)
    assert all(float(r[2]) >= 0.5 for r in rows)
    accuracy = np.mean([int(r[1]) == int(answers[r[0]]) for r in rows])
    assert accuracy > 0.7

    with open(binary_data["train"], "rb") as f:
        r = server.post(
            "evaluation",
            {**a, "minscore": "0.7", "maxdeviation": "0.05", "niterations": "2"},
            {"dataset": f},
        )
    assert r.status_code == 200
    evaluation = r.json()
    assert evaluation["status"] in (0, 4, 8, 12)
    assert {"runid", "score", "auc", "accuracy", "balanced accuracy"} <= set(evaluation)

    r = server.get("evaluationlog", {**a, "runid": evaluation["runid"]})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/zip"
    names = zip_names(r.content)
    assert {"info.log", "metrics.json", "roc-curve.png"} <= set(names)
    assert any(n.startswith("tensor/") for n in names)

    r = server.get("export", a)
    assert r.status_code == 200
    assert zip_names(r.content) == ["model.npz"]
    exported = r.content

    r = server.post("import", b, {"importzip": ("import.zip", io.BytesIO(exported))})
    assert (r.status_code, r.text) == (200, "Ok")
    assert server.predict(b["uniqueid"], b["dirhash"], binary_data["predict"]) == first

    # evaluation of the trained model (Moodle's trainedmodeldirhash), no training
    with open(binary_data["train"], "rb") as f:
        r = server.post(
            "evaluation",
            {
                **b,
                "dirhash": "evalrun",
                "minscore": "0.7",
                "maxdeviation": "0.05",
                "niterations": "1",
                "trainedmodeldirhash": b["dirhash"],
            },
            {"dataset": f},
        )
    assert r.status_code == 200
    assert r.json()["status"] in (0, 4, 8, 12)

    for model in (a, b):
        r = server.post("deletemodel", {"uniqueid": model["uniqueid"]})
        assert (r.status_code, r.text) == (200, "Ok")
        assert (
            server.predict(model["uniqueid"], model["dirhash"], binary_data["predict"])["status"]
            == 2
        )
        assert server.get("export", model).status_code == 503
    assert server.storage is not None
    assert not (server.storage / a["uniqueid"]).exists()
    assert_no_temp_files(server)


def test_untrained_prediction_is_200_with_status_2(server, binary_data):
    answer = server.predict("neverexisted", "x", binary_data["predict"])
    assert answer["status"] == 2
    assert answer["info"] == ["Provided model have not been trained yet"]


def test_export_of_nothing_is_503(server):
    assert server.get("export", ids("neverexisted")).status_code == 503


def test_missing_evaluation_log_is_an_empty_zip(server):
    r = server.get("evaluationlog", {**ids("neverexisted"), "runid": "123"})
    assert r.status_code == 200
    assert zip_names(r.content) == []


def test_bad_dataset_is_a_json_answer_moodle_can_show(server, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text('nfeatures,targetclasses\n2,"[0,1]"\na,b,target\n1,x,0\n')
    with open(bad, "rb") as f:
        r = server.post("training", ids("bad"), {"dataset": f})
    assert r.status_code == 200
    assert r.json()["status"] == 1
    assert r.json()["info"]


def test_training_without_every_class_is_status_8(server, tmp_path):
    one_class = tmp_path / "one.csv"
    one_class.write_text(
        'nfeatures,targetclasses,targettype\n2,"[0,1]",discrete\n'
        "a,b,target\n" + "0.1,0.2,1\n0.3,0.1,1\n0.5,0.5,1\n"
    )
    with open(one_class, "rb") as f:
        r = server.post("training", ids("oneclass"), {"dataset": f})
    assert r.status_code == 200
    assert r.json()["status"] == 8


@pytest.mark.parametrize(
    "data, files, missing",
    [
        ({"dirhash": "x"}, True, "uniqueid"),
        ({"uniqueid": "x"}, True, "dirhash"),
        ({"uniqueid": "x", "dirhash": "x"}, False, "dataset"),
        ({"uniqueid": "///", "dirhash": "x"}, True, "uniqueid"),
    ],
)
def test_malformed_requests_are_400(server, binary_data, data, files, missing):
    with open(binary_data["predict"], "rb") as f:
        r = server.post("prediction", data, {"dataset": f} if files else None)
    assert r.status_code == 400
    assert missing in r.json()["info"][0]


def test_evaluation_numbers_are_checked(server, binary_data):
    with open(binary_data["train"], "rb") as f:
        r = server.post(
            "evaluation",
            {**ids("nums"), "minscore": "lots", "maxdeviation": "0.05", "niterations": "1"},
            {"dataset": f},
        )
    assert r.status_code == 400
    assert "minscore" in r.json()["info"][0]


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


def symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


@pytest.mark.parametrize(
    "bad_entry",
    [
        ("../escaped.txt", b"outside"),
        ("../../escaped.txt", b"outside"),
        ("classifier/../../escaped.txt", b"outside"),
        ("/tmp/escaped-absolute.txt", b"outside"),
        symlink_entry("model-link.npz", "/etc/passwd"),
    ],
    ids=["dotdot", "dotdot2", "nested-dotdot", "absolute", "symlink"],
)
def test_import_refuses_unsafe_zips(server, binary_data, exported_model, bad_entry):
    target = ids("unsafe")
    archive = make_zip([("model.npz", exported_model), bad_entry])
    r = server.post("import", target, {"importzip": ("import.zip", io.BytesIO(archive))})
    assert r.status_code == 400
    assert "zip entry" in r.json()["info"][0]
    # refused whole: no model imported, nothing written anywhere
    assert (
        server.predict(target["uniqueid"], target["dirhash"], binary_data["predict"])["status"] == 2
    )
    assert server.storage is not None
    everything = [p.name for p in files_under(server.storage.parent)]
    assert not any("escaped" in name for name in everything)
    assert not Path("/tmp/escaped-absolute.txt").exists()
    assert_no_temp_files(server)


def test_the_same_zip_without_the_bad_entry_imports(server, binary_data, exported_model):
    target = ids("safe")
    archive = make_zip([("model.npz", exported_model)])
    r = server.post("import", target, {"importzip": ("import.zip", io.BytesIO(archive))})
    assert (r.status_code, r.text) == (200, "Ok")
    assert (
        server.predict(target["uniqueid"], target["dirhash"], binary_data["predict"])["status"] == 0
    )
    server.post("deletemodel", {"uniqueid": target["uniqueid"]})


def test_import_refuses_a_zip_bomb(server, exported_model):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.npz", exported_model)
        for i in range(3):
            z.writestr(f"zeros{i}.bin", b"\0" * (1 << 20))  # 3 MiB > --max-unzipped-mb 1
    r = server.post("import", ids("bomb"), {"importzip": ("import.zip", archive.getvalue())})
    assert r.status_code == 400
    assert "expands to more than" in r.json()["info"][0]
    assert_no_temp_files(server)


def test_import_of_something_else_is_400(server):
    r = server.post("import", ids("junk"), {"importzip": ("import.zip", b"not a zip")})
    assert r.status_code == 400
    archive = make_zip([("readme.txt", b"hello")])
    r = server.post("import", ids("junk"), {"importzip": ("import.zip", archive)})
    assert r.status_code == 400
    assert "model" in r.json()["info"][0]
    for garbage in (b"garbage", b"PK\x03\x04truncated"):
        archive = make_zip([("model.npz", garbage)])
        r = server.post("import", ids("junk"), {"importzip": ("import.zip", archive)})
        assert r.status_code == 400
        assert "cannot be read" in r.json()["info"][0]


def test_form_values_are_reduced_to_safe_names(server, binary_data):
    assert server.storage is not None
    server.train("../../evil/../x y", "../d.h/a$s\\h", binary_data["train"])
    assert (server.storage / "evilxy" / "dhash" / "classifier" / "model.npz").is_file()
    assert not any("evil" in p.name for p in server.storage.parent.iterdir())
    assert server.predict("evilxy", "dhash", binary_data["predict"])["status"] == 0
    server.post("deletemodel", {"uniqueid": "../evil/xy"})
    assert not (server.storage / "evilxy").exists()


def test_trainings_queue_instead_of_failing(server, binary_data):
    """Three trainings of one model at once with one training slot: all succeed,
    one after the other, each continuing from the previous model."""
    m = ids("queued")

    def train(_: int) -> dict[str, Any]:
        return server.train(m["uniqueid"], m["dirhash"], binary_data["train"])

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(train, range(3)))
    assert answers == [{"status": 0, "info": []}] * 3
    exported = zipfile.ZipFile(io.BytesIO(server.get("export", m).content)).read("model.npz")
    with np.load(io.BytesIO(exported)) as npz:
        history = json.loads(str(npz["meta"]))["history"]
    assert history["trainings"] == 3
    server.post("deletemodel", {"uniqueid": m["uniqueid"]})


# ---------------------------------------------------------------------------
# Logs and output


def test_one_access_log_line_per_request(server):
    before = server.log_text().count('"GET /version" 200')
    for _ in range(3):
        server.get("version")
    lines = [ln for ln in server.log_text().splitlines() if '"GET /version" 200' in ln]
    assert len(lines) == before + 3
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
