"""The server's routes in process (`helpers.inprocess`): what each endpoint
answers to Moodle's requests, right and wrong, with a local directory as
the store. The credentials check here is the application's own; the gate
that answers before a body is read runs in a real server
(tests/test_server.py, tests/test_server_hostile.py), as does everything
else that needs a socket."""

from __future__ import annotations

import hashlib
import io
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.inprocess import App
from helpers.servers import PASSWORD, USER, dirhash, files_under, make_zip, zip_names

from mlbackend.server import auth
from mlbackend.server.config import MIB, ServerConfig
from mlbackend.server.local import LocalStorage

pytestmark = pytest.mark.usefixtures("small_training")

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
def temp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The temporary directory of the module's requests (checked empty after each)."""
    path = tmp_path_factory.mktemp("routes-tmp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(path))
        yield path


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, temp: Path) -> App:
    """A server with 1 MiB uploads and imports, three users of three entry kinds."""
    models = tmp_path_factory.mktemp("routes") / "models"
    config = ServerConfig(max_upload_bytes=MIB, max_unzipped_bytes=MIB)
    return App(LocalStorage(str(models)), config, users=users_value())


@pytest.fixture(autouse=True)
def nothing_left_behind(temp: Path) -> Iterator[None]:
    yield
    assert files_under(temp) == [] and list(temp.iterdir()) == []


@pytest.fixture(scope="module")
def exported_model(app: App, binary_data: dict[str, Any]) -> bytes:
    """model.npz of a model trained once, for the import tests."""
    source = ids("exportsource")
    app.train(source["uniqueid"], source["dirhash"], binary_data["train"])
    r = app.get("export", source)
    assert r.status_code == 200
    app.post("deletemodel", {"uniqueid": source["uniqueid"]})
    return zipfile.ZipFile(io.BytesIO(r.content)).read("model.npz")


def ids(name: str) -> dict[str, str]:
    return {"uniqueid": name, "dirhash": dirhash(f"/moodledata/models/{name}/v1")}


def models_dir(app: App) -> Path:
    assert isinstance(app.storage, LocalStorage)
    return Path(app.storage.base_dir)


# ---------------------------------------------------------------------------
# Credentials and methods


def test_version_needs_no_credentials(app):
    from mlbackend import reported_version

    r = app.get("version", auth=None)
    assert (r.status_code, r.text) == (200, reported_version())


@pytest.mark.parametrize(
    "creds",
    [None, (USER, "wrong"), ("nosuchuser", PASSWORD), (LEGACY[0], "wrong"), (MODERN[0], "wrong")],
    ids=["missing", "wrong-password", "unknown-user", "wrong-legacy", "wrong-modern"],
)
def test_bad_credentials_get_401_and_nothing_runs(app, creds, binary_data):
    for endpoint in GET_ENDPOINTS:
        r = app.get(endpoint, {**ids("auth"), "runid": "1"}, auth=creds)
        assert r.status_code == 401, endpoint
        assert r.headers["WWW-Authenticate"].startswith("Basic")
    for endpoint in POST_ENDPOINTS:
        with open(binary_data["train"], "rb") as f:
            r = app.post(endpoint, ids("auth"), {"dataset": f}, auth=creds)
        assert r.status_code == 401, endpoint
    assert not (models_dir(app) / "auth").exists()


def test_a_non_basic_authorization_is_401(app):
    r = app.request("GET", "export", auth=None, headers={"Authorization": "Bearer abc"})
    assert r.status_code == 401


@pytest.mark.parametrize(
    "creds", [(USER, PASSWORD), LEGACY, MODERN], ids=["plain", "old-sha256", "pbkdf2"]
)
def test_every_kind_of_user_entry_logs_in(app, creds):
    for _ in range(2):  # the second pbkdf2 check comes from the verified cache
        r = app.get("evaluationlog", {**ids("nobody"), "runid": "1"}, auth=creds)
        assert r.status_code == 200


@pytest.mark.parametrize(
    "method, endpoint",
    [
        ("POST", "version"),
        ("GET", "training"),
        ("GET", "prediction"),
        ("GET", "evaluation"),
        ("POST", "evaluationlog"),
        ("POST", "export"),
        ("GET", "import"),
        ("GET", "deletemodel"),
        ("PUT", "training"),
        ("DELETE", "deletemodel"),
    ],
)
def test_a_wrong_method_is_405(app, method, endpoint):
    r = app.request(method, endpoint)
    assert r.status_code == 405 and r.headers.get("Allow")


def test_an_unknown_endpoint_is_404(app):
    assert app.get("nothing").status_code == 404


# ---------------------------------------------------------------------------
# Answers Moodle can show


def test_a_bad_dataset_is_a_json_answer_moodle_can_show(app, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text('nfeatures,targetclasses\n2,"[0,1]"\na,b,target\n1,x,0\n')
    with open(bad, "rb") as f:
        r = app.post("training", ids("bad"), {"dataset": f})
    assert r.status_code == 200
    assert r.json()["status"] == 1 and "Line 4" in r.json()["info"][0]


def test_training_without_every_class_is_status_8(app, tmp_path):
    one_class = tmp_path / "one.csv"
    one_class.write_text(
        'nfeatures,targetclasses,targettype\n2,"[0,1]",discrete\n'
        "a,b,target\n" + "0.1,0.2,1\n0.3,0.1,1\n0.5,0.5,1\n"
    )
    with open(one_class, "rb") as f:
        r = app.post("training", ids("oneclass"), {"dataset": f})
    assert r.status_code == 200 and r.json()["status"] == 8


@pytest.mark.parametrize(
    "data, files, missing",
    [
        ({"dirhash": "x"}, True, "uniqueid"),
        ({"uniqueid": "x"}, True, "dirhash"),
        ({"uniqueid": "x", "dirhash": "x"}, False, "dataset"),
        ({"uniqueid": "///", "dirhash": "x"}, True, "uniqueid"),
    ],
)
def test_malformed_requests_are_400(app, binary_data, data, files, missing):
    with open(binary_data["predict"], "rb") as f:
        r = app.post("prediction", data, {"dataset": f} if files else None)
    assert r.status_code == 400 and missing in r.json()["info"][0]


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"minscore": "lots"}, "minscore"),
        ({"maxdeviation": "nan"}, "maxdeviation is not a finite number"),
        ({"niterations": "1.5"}, "niterations"),
        ({"niterations": None}, "niterations is missing"),
    ],
)
def test_evaluation_numbers_are_checked(app, binary_data, fields, words):
    form = {**ids("nums"), "minscore": "0.7", "maxdeviation": "0.05", "niterations": "1"}
    form.update(fields)
    with open(binary_data["train"], "rb") as f:
        r = app.post("evaluation", {k: v for k, v in form.items() if v is not None}, {"dataset": f})
    assert r.status_code == 400 and words in r.json()["info"][0]


def test_an_evaluation_log_needs_a_runid(app):
    r = app.get("evaluationlog", {**ids("x"), "runid": "abc"})
    assert r.status_code == 400 and "runid" in r.json()["info"][0]


def test_form_values_are_reduced_to_safe_names(app, binary_data):
    models = models_dir(app)
    app.train("../../evil/../x y", "../d.h/a$s\\h", binary_data["train"])
    assert (models / "evilxy" / "dhash" / "classifier" / "model.npz").is_file()
    assert not any("evil" in p.name for p in models.parent.iterdir())
    assert app.predict("evilxy", "dhash", binary_data["predict"])["status"] == 0
    app.post("deletemodel", {"uniqueid": "../evil/xy"})
    assert not (models / "evilxy").exists()


def test_error_answers_do_not_show_the_servers_paths(app, binary_data):
    m = ids("paths")
    app.train(m["uniqueid"], m["dirhash"], binary_data["train"])
    model = models_dir(app) / m["uniqueid"] / m["dirhash"] / "classifier" / "model.npz"
    model.write_bytes(b"damaged")
    r = app.predict(m["uniqueid"], m["dirhash"], binary_data["predict"])
    assert r["status"] == 1 and "cannot be read" in r["info"][0]
    assert str(models_dir(app)) not in r["info"][0] and tempfile.gettempdir() not in r["info"][0]
    assert f"{m['uniqueid']}/{m['dirhash']}/classifier/model.npz" in r["info"][0]
    app.post("deletemodel", {"uniqueid": m["uniqueid"]})


# ---------------------------------------------------------------------------
# Uploads and imports


def test_an_oversized_upload_is_413_and_leaves_nothing(app):
    big = b"0" * (MIB + 200_000)
    r = app.post("training", ids("big"), {"dataset": ("big.csv", big)})
    assert r.status_code == 413 and r.json()["status"] == 1
    assert "--max-upload-mb" in r.json()["info"][0]
    assert not (models_dir(app) / "big").exists()


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
def test_import_refuses_unsafe_zips(app, binary_data, exported_model, bad_entry):
    target = ids("unsafe")
    archive = make_zip([("model.npz", exported_model), bad_entry])
    r = app.post("import", target, {"importzip": ("import.zip", archive)})
    assert r.status_code == 400 and "zip entry" in r.json()["info"][0]
    # refused whole: no model imported, nothing written anywhere
    assert app.predict(target["uniqueid"], target["dirhash"], binary_data["predict"])["status"] == 2
    everything = [p.name for p in files_under(models_dir(app).parent)]
    assert not any("escaped" in name for name in everything)
    assert not Path("/tmp/escaped-absolute.txt").exists()


def test_the_same_zip_without_the_bad_entry_imports(app, binary_data, exported_model):
    target = ids("safe")
    r = app.post(
        "import", target, {"importzip": ("import.zip", make_zip([("model.npz", exported_model)]))}
    )
    assert (r.status_code, r.text) == (200, "Ok")
    assert app.predict(target["uniqueid"], target["dirhash"], binary_data["predict"])["status"] == 0
    app.post("deletemodel", {"uniqueid": target["uniqueid"]})


def test_import_refuses_a_zip_bomb(app, exported_model):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.npz", exported_model)
        # 3 MiB > 1 MiB unzipped, in files an import reads (others are not
        # extracted at all, see test_hostile_server.py)
        for name in ("model.json", "classifier.pkl", "model.ckpt/saved_model.pb"):
            z.writestr(name, b"\0" * (1 << 20))
    r = app.post("import", ids("bomb"), {"importzip": ("import.zip", archive.getvalue())})
    assert r.status_code == 400 and "expands to more than" in r.json()["info"][0]


def test_an_import_of_something_else_is_400(app):
    r = app.post("import", ids("junk"), {"importzip": ("import.zip", b"not a zip")})
    assert r.status_code == 400
    r = app.post(
        "import", ids("junk"), {"importzip": ("import.zip", make_zip([("readme.txt", b"hello")]))}
    )
    assert r.status_code == 400 and "model" in r.json()["info"][0]
    for garbage in (b"garbage", b"PK\x03\x04truncated"):
        archive = make_zip([("model.npz", garbage)])
        r = app.post("import", ids("junk"), {"importzip": ("import.zip", archive)})
        assert r.status_code == 400 and "cannot be read" in r.json()["info"][0]


def test_moodlemlbackend_models_import_through_the_server(app, binary_data, legacy3, export2):
    """Both old formats, zipped as Moodle zips an export directory."""
    from helpers.legacy_files import check_predictions

    for name, fixture in (("old3", legacy3), ("old2", export2)):
        entries = [
            (str(p.relative_to(fixture["dir"])), p.read_bytes())
            for p in files_under(fixture["dir"])
        ]
        r = app.post("import", ids(name), {"importzip": ("import.zip", make_zip(entries))})
        assert (r.status_code, r.text) == (200, "Ok"), r.text
        m = ids(name)
        check_predictions(
            app.predict(m["uniqueid"], m["dirhash"], binary_data["predict"]),
            fixture["proba"],
            fixture["ids"],
        )
        r = app.get("export", m)
        assert r.status_code == 200 and "model.npz" in zip_names(r.content)
        app.post("deletemodel", {"uniqueid": m["uniqueid"]})
