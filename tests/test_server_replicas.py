"""Several `mlbackend serve` replicas sharing one S3 bucket, as a big site runs
them behind a load balancer: three real server processes and moto's S3
server on loopback. Each test is one way replicas used to lose, mix up or
resurrect a model (issue 13).

Orderings are made by sequencing requests and by reading the servers' logs
(a server logs "changing KEY from version ETAG" once it has read the version
a change starts from), never by sleeping: a training takes seconds, a
request that follows the log line milliseconds.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.legacy_files import check_predictions
from helpers.servers import (
    S3Endpoint,
    Server,
    dirhash,
    make_zip,
    start_s3,
    start_server,
    stop,
    wait_for_log,
    zip_names,
)

from mlbackend import synthetic

pytest.importorskip("moto")
pytest.importorskip("boto3")

BUCKET = "mlbackend-replicas"
CHANGING = "changing {key} from version"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    endpoint = start_s3(tmp_path_factory.mktemp("replicas-s3"), BUCKET)
    yield endpoint
    stop(endpoint.proc)


@pytest.fixture(scope="module")
def replicas(
    s3: S3Endpoint, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server, Server]]:
    tmp = tmp_path_factory.mktemp("replicas")
    started: list[Server] = []
    try:
        for name in "abc":
            started.append(
                start_server(tmp, s3.server_env(), "--s3-endpoint-url", s3.url, name=name)
            )
        yield started[0], started[1], started[2]
    finally:
        for server in started:
            stop(server.proc)


@pytest.fixture(scope="module")
def long_training(datadir: Path) -> str:
    """A training file with binary_data's features that takes seconds to train on."""
    data = synthetic.generate(8000, 20, seed=11)
    return synthetic.write_training(str(datadir / "replicas-long-train.csv"), data)


def history(s3: S3Endpoint, key: str) -> dict[str, Any]:
    """The training history recorded in the stored model."""
    with (
        zipfile.ZipFile(io.BytesIO(s3.get(key))) as archive,
        np.load(io.BytesIO(archive.read("model.npz")), allow_pickle=False) as npz,
    ):
        return dict(json.loads(str(npz["meta"]))["history"])


def rows(path: str) -> int:
    with open(path) as f:
        return sum(1 for _ in f) - 3  # metadata names, values, column names


def train_in_background(
    pool: concurrent.futures.Executor, server: Server, uid: str, h: str, path: str
) -> concurrent.futures.Future[dict[str, Any]]:
    return pool.submit(server.train, uid, h, path)


def import_zip(server: Server, uid: str, h: str, data: bytes) -> None:
    r = server.post(
        "import", {"uniqueid": uid, "dirhash": h}, {"importzip": ("import.zip", io.BytesIO(data))}
    )
    assert (r.status_code, r.text) == (200, "Ok")


def zip_of(directory: Path) -> bytes:
    return make_zip(
        [
            (str(p.relative_to(directory)), p.read_bytes())
            for p in sorted(directory.rglob("*"))
            if p.is_file()
        ]
    )


# --------------------------------------------------------------------------
# Imports reach the bucket


def test_imports_of_every_format_reach_s3_and_replace_the_model(
    s3,
    replicas,
    binary_data,
    legacy3,  # noqa: F811 - a fixture
    export2,  # noqa: F811 - a fixture
):
    a, b, c = replicas
    h = dirhash("/moodledata/models/imported/v1")

    # moodlemlbackend 3.x: stored as its own files, converted where it is used
    import_zip(a, "imported3", h, zip_of(legacy3["dir"]))
    assert sorted(zip_names(s3.get(f"imported3/{h}"))) == sorted(
        str(p.relative_to(legacy3["dir"])) for p in legacy3["dir"].rglob("*") if p.is_file()
    )
    check_predictions(
        b.predict("imported3", h, binary_data["predict"]), legacy3["proba"], legacy3["ids"]
    )

    # moodlemlbackend 2.x export: converted at import
    import_zip(b, "imported2", h, zip_of(export2["dir"]))
    assert zip_names(s3.get(f"imported2/{h}")) == ["model.npz"]
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
    assert "model.npz" not in zip_names(s3.get(f"replaced/{h}"))
    check_predictions(
        c.predict("replaced", h, binary_data["predict"]), legacy3["proba"], legacy3["ids"]
    )
    # and training on it continues from the 3.x model, on another replica
    assert a.train("replaced", h, binary_data["train"])["status"] == 0
    assert history(s3, f"replaced/{h}")["trainings"] == 1


def test_an_import_replaces_a_stored_object_nobody_can_read(s3, replicas, binary_data, export2):  # noqa: F811 - fixtures
    a, b, _ = replicas
    h = dirhash("/moodledata/models/damaged/v1")
    s3.client.put_object(Bucket=BUCKET, Key=f"damaged/{h}", Body=b"not a zip")
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
    s3, replicas, binary_data, long_training
):
    a, b, c = replicas
    uid, h = "fresh", dirhash("/moodledata/models/fresh/v1")
    key = f"{uid}/{h}"
    a.train(uid, h, binary_data["train"])
    first = b.predict(uid, h, binary_data["predict"])  # B fetches the model once

    before = s3.requests_for(key)
    for _ in range(5):
        assert b.predict(uid, h, binary_data["predict"]) == first
    checks = s3.requests_for(key)[len(before) :]
    assert checks == [("GET", 304)] * 5  # no body: B's copy is the stored version

    c.train(uid, h, long_training)  # another replica changes the model
    after = b.predict(uid, h, binary_data["predict"])
    assert after == c.predict(uid, h, binary_data["predict"])
    assert after != first
    # C wrote the new version and kept it: its prediction downloaded nothing
    assert s3.requests_for(key)[-1] == ("GET", 304)


# --------------------------------------------------------------------------
# Concurrent changes


def test_two_replicas_training_one_model_at_once_lose_neither_training(
    s3, replicas, binary_data, long_training
):
    a, b, _ = replicas
    uid, h = "together", dirhash("/moodledata/models/together/v1")
    key = f"{uid}/{h}"
    a.train(uid, h, binary_data["train"])
    base = history(s3, key)
    conflicts = sum(s.log_text().count(f"{key} changed on another server") for s in (a, b))

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        changes = a.log_text().count(CHANGING.format(key=key))
        slow = train_in_background(pool, a, uid, h, long_training)
        wait_for_log(a, CHANGING.format(key=key), changes + 1)  # A has read version N
        quick = b.train(uid, h, binary_data["train"])  # B reads N too
        assert quick == {"status": 0, "info": []}
        assert slow.result() == {"status": 0, "info": []}

    # Both started from N; whichever wrote second found N+1 and trained again on it.
    assert (
        sum(s.log_text().count(f"{key} changed on another server") for s in (a, b)) == conflicts + 1
    )
    final = history(s3, key)
    assert final["trainings"] == base["trainings"] + 2
    assert final["rows_seen"] == base["rows_seen"] + rows(long_training) + rows(
        binary_data["train"]
    )


# --------------------------------------------------------------------------
# Delete is ordered with trainings


@pytest.mark.parametrize("existing", [True, False], ids=["trained-model", "first-training"])
def test_a_model_deleted_during_a_training_does_not_come_back(
    s3, replicas, binary_data, long_training, existing
):
    a, b, c = replicas
    uid = f"deleted-{'trained' if existing else 'new'}"
    h = dirhash(f"/moodledata/models/{uid}/v1")
    key = f"{uid}/{h}"
    if existing:
        a.train(uid, h, binary_data["train"])
        assert c.predict(uid, h, binary_data["predict"])["status"] == 0  # C has it cached

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        changes = a.log_text().count(CHANGING.format(key=key))
        training = train_in_background(pool, a, uid, h, long_training)
        wait_for_log(a, CHANGING.format(key=key), changes + 1)  # A is training
        r = b.post("deletemodel", {"uniqueid": uid})
        assert (r.status_code, r.text) == (200, "Ok")
        answer = training.result()

    assert answer["status"] == 1
    assert "deleted while" in answer["info"][0]
    assert s3.keys(f"{uid}/") == []
    for server in (a, b, c):
        assert server.predict(uid, h, binary_data["predict"])["status"] == 2

    # A training that starts after the delete makes a new model.
    assert c.train(uid, h, binary_data["train"])["status"] == 0
    assert history(s3, key)["trainings"] == 1
    assert a.predict(uid, h, binary_data["predict"])["status"] == 0


# --------------------------------------------------------------------------
# Evaluation in S3 mode


def test_the_evaluation_dir_names_no_removed_directory(s3, replicas, binary_data):
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
