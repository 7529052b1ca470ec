"""Server mode with S3 storage: moto's S3 server as a real endpoint on
loopback, and two `mlbackend serve` processes sharing one bucket, as
servers behind a load balancer do. Whatever one server did, the other sees."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.servers import (
    PASSWORD,
    USER,
    Server,
    dirhash,
    files_under,
    start_s3,
    start_server,
    stop,
    zip_names,
)

pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

BUCKET = "mlbackend-test-models"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("s3")
    endpoint = start_s3(tmp, BUCKET)
    yield {"tmp": tmp, "endpoint": endpoint.url, "client": endpoint.client, "env": endpoint.env}
    stop(endpoint.proc)


@pytest.fixture(scope="module")
def servers(s3: dict[str, Any]) -> Iterator[tuple[Server, Server]]:
    env = {
        **s3["env"],
        "MOODLE_MLBACKEND_PYTHON_USERS": f"{USER}:{PASSWORD}",
        "MOODLE_MLBACKEND_PYTHON_S3_BUCKET_NAME": BUCKET,
    }
    first = start_server(s3["tmp"], env, "--s3-endpoint-url", s3["endpoint"], name="a")
    try:
        second = start_server(s3["tmp"], env, "--s3-endpoint-url", s3["endpoint"], name="b")
    except BaseException:
        stop(first.proc)
        raise
    yield first, second
    stop(first.proc)
    stop(second.proc)


def keys(s3: dict[str, Any], prefix: str = "") -> list[str]:
    answer = s3["client"].list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in answer.get("Contents", []))


def assert_stateless(*servers: Server) -> None:
    """Nothing stays on the servers' machine between requests but each
    server's cache of the model versions it has read (checked on every use)."""
    for server in servers:
        caches = [p for p in server.tempdir.iterdir() if p.name.startswith("mlbackend-s3-cache-")]
        assert len(caches) == 1
        assert [p for p in files_under(server.tempdir) if caches[0] not in p.parents] == []


def test_a_model_trained_through_one_server_predicts_through_the_other(s3, servers, binary_data):
    a, b = servers
    uid, h = "shared", dirhash("/moodledata/models/shared/v1")
    assert a.train(uid, h, binary_data["train"]) == {"status": 0, "info": []}
    assert keys(s3, f"{uid}/") == [f"{uid}/{h}"]
    stored = s3["client"].get_object(Bucket=BUCKET, Key=f"{uid}/{h}")["Body"].read()
    assert zip_names(stored) == ["model.npz"]  # a zip of classifier/, as the contract says

    through_b = b.predict(uid, h, binary_data["predict"])
    through_a = a.predict(uid, h, binary_data["predict"])
    assert through_b["status"] == 0
    assert through_b == through_a
    assert len(through_b["predictions"]) == len(binary_data["answers"])

    # training again through B continues from the stored model
    assert b.train(uid, h, binary_data["train"]) == {"status": 0, "info": []}
    assert s3["client"].get_object(Bucket=BUCKET, Key=f"{uid}/{h}")["Body"].read() != stored
    assert_stateless(a, b)


def test_the_whole_flow_across_two_servers(s3, servers, binary_data):
    a, b = servers
    m = {"uniqueid": "flow", "dirhash": dirhash("/moodledata/models/flow/v1")}
    copy = {"uniqueid": "flowcopy", "dirhash": dirhash("/moodledata/models/flowcopy/v1")}
    a.train(m["uniqueid"], m["dirhash"], binary_data["train"])
    predictions = b.predict(m["uniqueid"], m["dirhash"], binary_data["predict"])

    with open(binary_data["train"], "rb") as f:
        r = a.post(
            "evaluation",
            {**m, "minscore": "0.7", "maxdeviation": "0.05", "niterations": "1"},
            {"dataset": f},
        )
    assert r.status_code == 200
    runid = r.json()["runid"]
    # the run's logs went to the bucket, so the other server can hand them out
    r = b.get("evaluationlog", {**m, "runid": runid})
    assert r.status_code == 200
    assert {"info.log", "metrics.json"} <= set(zip_names(r.content))

    r = b.get("export", m)
    assert r.status_code == 200
    assert zip_names(r.content) == ["model.npz"]
    r = a.post("import", copy, {"importzip": ("import.zip", io.BytesIO(r.content))})
    assert (r.status_code, r.text) == (200, "Ok")
    assert b.predict(copy["uniqueid"], copy["dirhash"], binary_data["predict"]) == predictions

    # trained-model evaluation reads the model from the bucket
    with open(binary_data["train"], "rb") as f:
        r = b.post(
            "evaluation",
            {
                **copy,
                "dirhash": "check",
                "minscore": "0.7",
                "maxdeviation": "0.05",
                "niterations": "1",
                "trainedmodeldirhash": copy["dirhash"],
            },
            {"dataset": f},
        )
    assert r.status_code == 200
    assert r.json()["status"] in (0, 4, 8, 12)

    for model in (m, copy):
        assert b.post("deletemodel", {"uniqueid": model["uniqueid"]}).text == "Ok"
        assert keys(s3, model["uniqueid"] + "/") == []
        assert a.predict(model["uniqueid"], model["dirhash"], binary_data["predict"])["status"] == 2
        assert a.get("export", model).status_code == 503
    assert_stateless(a, b)


def test_missing_things_in_s3(servers, binary_data):
    a, b = servers
    assert a.predict("nothing", "x", binary_data["predict"])["status"] == 2
    assert b.get("export", {"uniqueid": "nothing", "dirhash": "x"}).status_code == 503
    r = a.get("evaluationlog", {"uniqueid": "nothing", "dirhash": "x", "runid": "1"})
    assert r.status_code == 200
    assert zip_names(r.content) == []
    assert b.post("deletemodel", {"uniqueid": "nothing"}).text == "Ok"


def test_a_bad_object_in_the_bucket_is_a_server_error_not_a_crash(s3, servers, binary_data):
    a, _ = servers
    s3["client"].put_object(Bucket=BUCKET, Key="broken/x", Body=b"not a zip")
    with open(binary_data["predict"], "rb") as f:
        r = a.post("prediction", {"uniqueid": "broken", "dirhash": "x"}, {"dataset": f})
    assert r.status_code == 500
    assert "S3" in r.json()["info"][0]
    a.post("deletemodel", {"uniqueid": "broken"})
    assert_stateless(a)


def test_refuses_to_start_without_the_bucket(s3, tmp_path):
    env = {
        **s3["env"],
        "MOODLE_MLBACKEND_PYTHON_USERS": f"{USER}:{PASSWORD}",
        "MOODLE_MLBACKEND_PYTHON_S3_BUCKET_NAME": "no-such-bucket",
    }
    with pytest.raises(RuntimeError, match="no-such-bucket"):
        start_server(Path(tmp_path), env, "--s3-endpoint-url", s3["endpoint"])
