"""The storage contract: what Moodle sees of a model, whichever store keeps
it. Every test runs over both stores, a local directory and an S3 bucket
(moto's S3 server, a real endpoint on loopback), with two servers sharing
the store, as replicas behind a load balancer do: whatever one did, the
other sees. The servers are the application in this process (`helpers.inprocess`);
tests/test_server.py drives a real server process over a socket.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.inprocess import App
from helpers.servers import S3Endpoint, dirhash, files_under, zip_names

from mlbackend.server.local import LocalStorage
from mlbackend.server.storage import Storage

KINDS = ["directory", "s3"]

pytestmark = pytest.mark.usefixtures("small_training")


@pytest.fixture(scope="module", params=KINDS)
def stores(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, moto: S3Endpoint
) -> Iterator[tuple[str, Storage, Storage]]:
    """Two storages over one store (two servers' views of it), and the kind.
    Each test uses models of its own names."""
    tmp = tmp_path_factory.mktemp(request.param)
    temp = tmp / "tmp"
    temp.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(temp))  # request dirs, S3 caches
        if request.param == "directory":
            a: Storage = LocalStorage(str(tmp / "models"))
            b: Storage = LocalStorage(str(tmp / "models"))
        else:
            from mlbackend.server.s3 import S3Storage

            bucket = moto.new_bucket()
            a = S3Storage(bucket, endpoint_url=moto.url)
            b = S3Storage(bucket, endpoint_url=moto.url)
        a.check()
        b.check()
        yield request.param, a, b
        a.close()
        b.close()
    assert files_under(temp) == [], "a request left files behind"


@pytest.fixture(scope="module")
def servers(stores: tuple[str, Storage, Storage]) -> tuple[App, App]:
    _, a, b = stores
    return App(a), App(b)


def ids(name: str) -> dict[str, str]:
    return {"uniqueid": name, "dirhash": dirhash(f"/moodledata/models/{name}/v1")}


def history(app: App, model: dict[str, str]) -> dict[str, Any]:
    """The stored model's history, read from its export."""
    r = app.get("export", model)
    assert r.status_code == 200, r.text
    exported = zipfile.ZipFile(io.BytesIO(r.content)).read("model.npz")
    with np.load(io.BytesIO(exported)) as npz:
        return dict(json.loads(str(npz["meta"]))["history"])


def evaluate(app: App, model: dict[str, str], path: str, **fields: str) -> Any:
    with open(path, "rb") as f:
        return app.post(
            "evaluation",
            {**model, "minscore": "0.7", "maxdeviation": "0.05", "niterations": "2", **fields},
            {"dataset": f},
        )


def test_the_life_of_a_model_across_two_servers(servers, binary_data):
    """Moodle's whole flow, each step through the server that did not do
    the previous one: train, predict, evaluate and read the run's logs,
    export, import as another model, score the trained model, train on,
    delete."""
    a, b = servers
    m, copy = ids("life"), ids("lifecopy")
    assert a.train(m["uniqueid"], m["dirhash"], binary_data["train"]) == {"status": 0, "info": []}

    first = b.predict(m["uniqueid"], m["dirhash"], binary_data["predict"])
    assert first["status"] == 0
    rows, answers = first["predictions"], binary_data["answers"]
    assert [r[0] for r in rows] == list(answers)
    assert all(isinstance(x, str) for r in rows for x in r)
    assert all(float(r[2]) >= 0.5 for r in rows)
    assert np.mean([int(r[1]) == int(answers[r[0]]) for r in rows]) > 0.7
    assert a.predict(m["uniqueid"], m["dirhash"], binary_data["predict"]) == first

    r = evaluate(a, m, binary_data["train"])
    assert r.status_code == 200
    evaluation = r.json()
    assert evaluation["status"] in (0, 4, 8, 12)
    assert {"runid", "score", "auc", "accuracy", "balanced accuracy"} <= set(evaluation)
    r = b.get("evaluationlog", {**m, "runid": evaluation["runid"]})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    names = zip_names(r.content)
    assert {"info.log", "metrics.json", "roc-curve.png", "importance.png"} <= set(names)
    assert any(n.startswith("tensor/") for n in names)

    r = b.get("export", m)
    assert r.status_code == 200 and zip_names(r.content) == ["model.npz"]
    r = a.post("import", copy, {"importzip": ("import.zip", r.content)})
    assert (r.status_code, r.text) == (200, "Ok")
    assert b.predict(copy["uniqueid"], copy["dirhash"], binary_data["predict"]) == first

    # Moodle's trainedmodeldirhash: the stored model scored, nothing trained.
    r = evaluate(b, {**copy, "dirhash": "check"}, binary_data["train"], niterations="1",
                 trainedmodeldirhash=copy["dirhash"])  # fmt: skip
    assert r.status_code == 200 and r.json()["status"] in (0, 4, 8, 12)
    assert b.predict("check", "x", binary_data["predict"])["status"] == 2  # nothing stored

    # Training again through the other server continues from the stored model.
    assert b.train(m["uniqueid"], m["dirhash"], binary_data["train"])["status"] == 0
    assert history(a, m)["trainings"] == 2
    assert a.predict(m["uniqueid"], m["dirhash"], binary_data["predict"]) != first

    for model in (m, copy):
        assert (b.post("deletemodel", {"uniqueid": model["uniqueid"]}).text) == "Ok"
        assert a.predict(model["uniqueid"], model["dirhash"], binary_data["predict"])["status"] == 2
        assert a.get("export", model).status_code == 503
        r = a.get("evaluationlog", {**model, "runid": evaluation["runid"]})
        assert r.status_code == 200 and zip_names(r.content) == []


def test_what_was_never_there(servers, binary_data):
    a, b = servers
    answer = a.predict("nothing", "x", binary_data["predict"])
    assert answer == {"status": 2, "info": ["Provided model have not been trained yet"]}
    assert b.get("export", {"uniqueid": "nothing", "dirhash": "x"}).status_code == 503
    r = a.get("evaluationlog", {"uniqueid": "nothing", "dirhash": "x", "runid": "1"})
    assert r.status_code == 200 and zip_names(r.content) == []
    assert b.post("deletemodel", {"uniqueid": "nothing"}).text == "Ok"


def test_trainings_of_one_model_at_once_lose_neither(servers, binary_data):
    """Two trainings at once, one through each server: both succeed and the
    second continues from the first (the writer lock of a directory; in S3,
    conditional writes, the loser running again on the winner's model)."""
    a, b = servers
    m = ids("queued")

    def train(app: App) -> dict[str, Any]:
        return app.train(m["uniqueid"], m["dirhash"], binary_data["train"])

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(train, (a, b)))
    assert answers == [{"status": 0, "info": []}] * 2
    assert history(b, m)["trainings"] == 2


def test_a_refused_dataset_changes_nothing(servers, binary_data, tmp_path):
    a, b = servers
    m = ids("refused")
    bad = tmp_path / "bad.csv"
    bad.write_text('nfeatures,targetclasses\n2,"[0,1]"\na,b,target\n1,x,0\n')
    with open(bad, "rb") as f:
        r = a.post("training", m, {"dataset": f})
    assert r.status_code == 200 and r.json()["status"] == 1
    assert "Line 4" in r.json()["info"][0]
    assert b.predict(m["uniqueid"], m["dirhash"], binary_data["predict"])["status"] == 2
    assert a.train(m["uniqueid"], m["dirhash"], binary_data["train"])["status"] == 0
    before = history(b, m)
    with open(bad, "rb") as f:
        assert b.post("training", m, {"dataset": f}).json()["status"] == 1
    assert history(a, m) == before


def test_an_unreadable_stored_model_is_an_answer_not_a_crash(stores, servers, binary_data, moto):
    """A model file damaged in the store (by hand, a disk error, another
    program): prediction answers why; training replaces it."""
    kind, a_store, _ = stores
    a, b = servers
    m = ids("damaged")
    if kind == "directory":
        assert isinstance(a_store, LocalStorage)
        target = Path(a_store.base_dir) / m["uniqueid"] / m["dirhash"] / "classifier"
        target.mkdir(parents=True)
        (target / "model.npz").write_bytes(b"not a model")
        expected = 200  # the contract's JSON, status 1, says what is wrong
    else:
        from mlbackend.server.s3 import S3Storage

        assert isinstance(a_store, S3Storage)
        moto.client.put_object(
            Bucket=a_store.bucket, Key=f"{m['uniqueid']}/{m['dirhash']}", Body=b"not a zip"
        )
        expected = 500  # the store itself is broken: a server error that says S3
    with open(binary_data["predict"], "rb") as f:
        r = b.post("prediction", m, {"dataset": f})
    assert r.status_code == expected
    assert r.json()["status"] == 1 and r.json()["info"]
    if kind == "directory":
        assert "cannot be read" in r.json()["info"][0]
        assert a.train(m["uniqueid"], m["dirhash"], binary_data["train"])["status"] == 0
        assert b.predict(m["uniqueid"], m["dirhash"], binary_data["predict"])["status"] == 0
    else:
        assert "S3" in r.json()["info"][0]
    b.post("deletemodel", {"uniqueid": m["uniqueid"]})
