"""Several replicas sharing one S3 bucket, as a big site runs them behind a
load balancer: three servers (the application in this process, each with
its own storage, cache and locks, as separate processes have) and moto's S3
server, a real endpoint on loopback. Each test is one way replicas used to
lose, mix up or resurrect a model (issue 13).

Orderings are made, never waited for: `paused_training` holds a training
after its replica has read the version it starts from, until the test has
done what must happen meanwhile.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.inprocess import App
from helpers.legacy_files import check_predictions
from helpers.servers import S3Endpoint, dirhash, make_zip, zip_names

from mlbackend import actions

pytestmark = pytest.mark.usefixtures("small_training")


@pytest.fixture(scope="module")
def bucket(moto: S3Endpoint) -> str:
    return moto.new_bucket()


@pytest.fixture(scope="module")
def replicas(moto: S3Endpoint, bucket: str) -> Iterator[tuple[App, App, App]]:
    from mlbackend.server.s3 import S3Storage

    storages = [S3Storage(bucket, endpoint_url=moto.url) for _ in range(3)]
    for storage in storages:
        storage.check()
    yield App(storages[0]), App(storages[1]), App(storages[2])
    for storage in storages:
        storage.close()


@pytest.fixture(scope="module")
def other_rows(datadir: Path) -> str:
    """A training file with binary_data's features and other rows."""
    from mlbackend import synthetic

    data = synthetic.generate(300, 20, seed=12)
    return synthetic.write_training(str(datadir / "replicas-other-train.csv"), data)


def get(moto: S3Endpoint, bucket: str, key: str) -> bytes:
    return bytes(moto.client.get_object(Bucket=bucket, Key=key)["Body"].read())


def keys(moto: S3Endpoint, bucket: str, prefix: str) -> list[str]:
    answer = moto.client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in answer.get("Contents", []))


def history(moto: S3Endpoint, bucket: str, key: str) -> dict[str, Any]:
    """The training history recorded in the stored model."""
    with (
        zipfile.ZipFile(io.BytesIO(get(moto, bucket, key))) as archive,
        np.load(io.BytesIO(archive.read("model.npz")), allow_pickle=False) as npz,
    ):
        return dict(json.loads(str(npz["meta"]))["history"])


def rows(path: str) -> int:
    with open(path) as f:
        return sum(1 for _ in f) - 3  # metadata names, values, column names


def import_zip(app: App, uid: str, h: str, data: bytes) -> None:
    r = app.post("import", {"uniqueid": uid, "dirhash": h}, {"importzip": ("import.zip", data)})
    assert (r.status_code, r.text) == (200, "Ok")


def zip_of(directory: Path) -> bytes:
    return make_zip(
        [
            (str(p.relative_to(directory)), p.read_bytes())
            for p in sorted(directory.rglob("*"))
            if p.is_file()
        ]
    )


@contextlib.contextmanager
def paused_training(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[threading.Event, threading.Event]]:
    """The next training to start waits, once its replica has read the model
    version it starts from (the storage calls the training with it), until
    the test sets `go`; `started` is set when it waits."""
    started, go = threading.Event(), threading.Event()
    train = actions.train
    first = threading.Lock()

    def held(model_dir: str, dataset_path: str, progress: bool = False) -> dict[str, Any]:
        if first.acquire(blocking=False):
            started.set()
            assert go.wait(600), "the test never let the training go on"
        return train(model_dir, dataset_path, progress)

    monkeypatch.setattr(actions, "train", held)
    try:
        yield started, go
    finally:
        go.set()


# --------------------------------------------------------------------------
# Imports reach the bucket


def test_imports_of_every_format_reach_s3_and_replace_the_model(
    moto, bucket, replicas, binary_data, legacy3, export2
):
    a, b, c = replicas
    h = dirhash("/moodledata/models/imported/v1")

    # moodlemlbackend 3.x: stored as its own files, converted where it is used
    import_zip(a, "imported3", h, zip_of(legacy3["dir"]))
    assert sorted(zip_names(get(moto, bucket, f"imported3/{h}"))) == sorted(
        str(p.relative_to(legacy3["dir"])) for p in legacy3["dir"].rglob("*") if p.is_file()
    )
    check_predictions(
        b.predict("imported3", h, binary_data["predict"]), legacy3["proba"], legacy3["ids"]
    )

    # moodlemlbackend 2.x export: converted at import
    import_zip(b, "imported2", h, zip_of(export2["dir"]))
    assert zip_names(get(moto, bucket, f"imported2/{h}")) == ["model.npz"]
    check_predictions(
        c.predict("imported2", h, binary_data["predict"]), export2["proba"], export2["ids"]
    )

    # ours, over an existing model that replica C has in its cache
    a.train("replaced", h, binary_data["train"])
    trained = c.predict("replaced", h, binary_data["predict"])
    r = b.get("export", {"uniqueid": "imported2", "dirhash": h})
    assert r.status_code == 200
    import_zip(a, "replaced", h, r.content)
    assert (
        c.predict("replaced", h, binary_data["predict"])
        == c.predict("imported2", h, binary_data["predict"])
        != trained
    )

    # a 3.x model over ours: nothing of the old model stays beside it
    import_zip(b, "replaced", h, zip_of(legacy3["dir"]))
    assert "model.npz" not in zip_names(get(moto, bucket, f"replaced/{h}"))
    check_predictions(
        c.predict("replaced", h, binary_data["predict"]), legacy3["proba"], legacy3["ids"]
    )
    # and training on it continues from the 3.x model, on another replica
    assert a.train("replaced", h, binary_data["train"])["status"] == 0
    assert history(moto, bucket, f"replaced/{h}")["trainings"] == 1


def test_an_import_replaces_a_stored_object_nobody_can_read(
    moto, bucket, replicas, binary_data, export2
):
    a, b, _ = replicas
    h = dirhash("/moodledata/models/damaged/v1")
    moto.client.put_object(Bucket=bucket, Key=f"damaged/{h}", Body=b"not a zip")
    with open(binary_data["predict"], "rb") as f:
        r = b.post("prediction", {"uniqueid": "damaged", "dirhash": h}, {"dataset": f})
    assert r.status_code == 500
    import_zip(a, "damaged", h, zip_of(export2["dir"]))
    check_predictions(
        b.predict("damaged", h, binary_data["predict"]), export2["proba"], export2["ids"]
    )


# --------------------------------------------------------------------------
# Fresh and cheap reads


def test_a_warm_replica_checks_its_copy_and_sees_another_replicas_training(
    moto, bucket, replicas, binary_data
):
    a, b, c = replicas
    uid, h = "fresh", dirhash("/moodledata/models/fresh/v1")
    key = f"{uid}/{h}"
    a.train(uid, h, binary_data["train"])
    first = b.predict(uid, h, binary_data["predict"])  # B fetches the model once

    before = moto.requests_for(key, bucket)
    for _ in range(5):
        assert b.predict(uid, h, binary_data["predict"]) == first
    checks = moto.requests_for(key, bucket)[len(before) :]
    assert checks == [("GET", 304)] * 5  # no body: B's copy is the stored version

    c.train(uid, h, binary_data["train"])  # another replica changes the model
    after = b.predict(uid, h, binary_data["predict"])
    assert after == c.predict(uid, h, binary_data["predict"])
    assert after != first
    # C wrote the new version and kept it: its prediction downloaded nothing
    assert moto.requests_for(key, bucket)[-1] == ("GET", 304)


# --------------------------------------------------------------------------
# Concurrent changes


def test_two_replicas_training_one_model_at_once_lose_neither_training(
    moto, bucket, replicas, binary_data, other_rows, monkeypatch, caplog
):
    a, b, _ = replicas
    uid, h = "together", dirhash("/moodledata/models/together/v1")
    a.train(uid, h, binary_data["train"])
    base = history(moto, bucket, f"{uid}/{h}")
    other = other_rows
    with (
        paused_training(monkeypatch) as (started, go),
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        held = pool.submit(a.train, uid, h, binary_data["train"])
        assert started.wait(600)  # A has read version N and holds
        assert b.train(uid, h, other) == {"status": 0, "info": []}  # B read N, wrote N+1
        go.set()
        assert held.result() == {"status": 0, "info": []}

    # Both started from N; A, writing second, found N+1 and trained again on it.
    conflicts = [r for r in caplog.records if "changed on another server" in r.getMessage()]
    assert len(conflicts) == 1
    final = history(moto, bucket, f"{uid}/{h}")
    assert final["trainings"] == base["trainings"] + 2
    assert final["rows_seen"] == base["rows_seen"] + rows(binary_data["train"]) + rows(other)


# --------------------------------------------------------------------------
# Delete is ordered with trainings


@pytest.mark.parametrize("existing", [True, False], ids=["trained-model", "first-training"])
def test_a_model_deleted_during_a_training_does_not_come_back(
    moto, bucket, replicas, binary_data, existing, monkeypatch
):
    a, b, c = replicas
    uid = f"deleted-{'trained' if existing else 'new'}"
    h = dirhash(f"/moodledata/models/{uid}/v1")
    if existing:
        a.train(uid, h, binary_data["train"])
        assert c.predict(uid, h, binary_data["predict"])["status"] == 0  # C has it cached

    with (
        paused_training(monkeypatch) as (started, go),
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        training = pool.submit(a.train, uid, h, binary_data["train"])
        assert started.wait(600)  # A is training
        r = b.post("deletemodel", {"uniqueid": uid})
        assert (r.status_code, r.text) == (200, "Ok")
        go.set()
        answer = training.result()

    assert answer["status"] == 1
    assert "deleted while" in answer["info"][0]
    assert keys(moto, bucket, f"{uid}/") == []
    for server in (a, b, c):
        assert server.predict(uid, h, binary_data["predict"])["status"] == 2

    # A training that starts after the delete makes a new model.
    assert c.train(uid, h, binary_data["train"])["status"] == 0
    assert history(moto, bucket, f"{uid}/{h}")["trainings"] == 1
    assert a.predict(uid, h, binary_data["predict"])["status"] == 0


# --------------------------------------------------------------------------
# Evaluation in S3 mode


def test_the_evaluation_dir_names_no_removed_directory(replicas, binary_data):
    a, b, _ = replicas
    m = {"uniqueid": "evaluated", "dirhash": dirhash("/moodledata/models/evaluated/v1")}
    with open(binary_data["train"], "rb") as f:
        r = a.post(
            "evaluation",
            {**m, "minscore": "0.7", "maxdeviation": "0.05", "niterations": "1"},
            {"dataset": f},
        )
    assert r.status_code == 200
    result = r.json()
    # The run's directory was temporary: Moodle gets no path to it (and so no
    # TensorBoard hint); it fetches the logs through /evaluationlog.
    assert result["dir"] == ""
    logs = b.get("evaluationlog", {**m, "runid": result["runid"]})
    assert {"info.log", "metrics.json"} <= set(zip_names(logs.content))
