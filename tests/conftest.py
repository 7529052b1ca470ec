"""Shared fixtures: Moodle-format data made by the tests, and `main(argv)`
in process. What the tests share besides fixtures is in `tests/helpers/`
(running the program, servers, hostile inputs, small models, the oracle)."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.hostile import FUZZ
from helpers.legacy_files import make_export2, make_legacy3
from helpers.run import Result, moodle
from helpers.servers import S3Endpoint, aws_env, start_s3, stop
from hypothesis import HealthCheck, settings

from mlbackend import synthetic
from mlbackend.cli import main

# Property-based tests (hypothesis): `make test` runs the same few examples
# every time, so that a red run can be repeated; `make fuzz` draws fresh ones
# and keeps failing examples in .hypothesis/ to replay them first next time.
# No deadline: the machine is shared, and some examples start a process.
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile(
    "quick",
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=_SLOW_OK,
    print_blob=True,
)
settings.register_profile("fuzz", deadline=None, suppress_health_check=_SLOW_OK, print_blob=True)
settings.load_profile("fuzz" if FUZZ else "quick")


@pytest.fixture
def run_main(capsys: pytest.CaptureFixture[str]):
    """Call `main(argv)` in process; returns a Result like `moodle()`."""

    def run(*argv: Any) -> Result:
        rc = main([str(a) for a in argv])
        out = capsys.readouterr()
        return Result(rc, out.out, out.err)

    return run


@pytest.fixture(scope="session")
def datadir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def binary_data(datadir: Path) -> dict[str, Any]:
    """600 training rows and 150 prediction rows of a 15 %-positive binary target."""
    data = synthetic.generate(750, 20, seed=1)
    train = synthetic.Synthetic(data.X[:600], data.y[:600], data.classes)
    rest = synthetic.Synthetic(data.X[600:], data.y[600:], data.classes)
    return {
        "train": synthetic.write_training(str(datadir / "binary-train.csv"), train),
        "predict": str(datadir / "binary-predict.csv"),
        "answers": synthetic.write_prediction(str(datadir / "binary-predict.csv"), rest),
    }


@pytest.fixture(scope="session")
def multiclass_data(datadir: Path) -> dict[str, Any]:
    data = synthetic.generate(400, 12, classes=(0, 1, 2), seed=2)
    train = synthetic.Synthetic(data.X[:320], data.y[:320], data.classes)
    rest = synthetic.Synthetic(data.X[320:], data.y[320:], data.classes)
    return {
        "train": synthetic.write_training(str(datadir / "multi-train.csv"), train),
        "predict": str(datadir / "multi-predict.csv"),
        "answers": synthetic.write_prediction(
            str(datadir / "multi-predict.csv"), rest, id_prefix="123-"
        ),
    }


@pytest.fixture(scope="session")
def trained_as_moodle(
    tmp_path_factory: pytest.TempPathFactory, binary_data: dict[str, Any]
) -> dict[str, Any]:
    """One training as Moodle runs it (a process, Moodle's argv) with an
    empty home directory: its result, the model directory, the home after
    it. Read, never changed, by the tests that need a model trained so."""
    tmp = tmp_path_factory.mktemp("moodle-training")
    home = tmp / "home"
    home.mkdir()
    r = moodle("training", "course1", tmp / "model", binary_data["train"], env={"HOME": str(home)})
    return {"result": r, "dir": tmp / "model", "home": home}


@pytest.fixture(scope="session")
def legacy3(
    tmp_path_factory: pytest.TempPathFactory, binary_data: dict[str, Any]
) -> dict[str, Any]:
    """A moodlemlbackend 3.x classifier/ and the answers it must give."""
    return make_legacy3(tmp_path_factory.mktemp("legacy3") / "classifier", binary_data["predict"])


@pytest.fixture(scope="session")
def export2(
    tmp_path_factory: pytest.TempPathFactory, binary_data: dict[str, Any]
) -> dict[str, Any]:
    """A moodlemlbackend 2.x export: model.json, one tanh layer of 10."""
    return make_export2(tmp_path_factory.mktemp("export2"), binary_data["predict"])


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """moto's S3 server, one process for the session: a real S3 endpoint on
    loopback. Its fake credentials are set in this process too, for the
    storages the tests build in process (`S3Endpoint.new_bucket` for each)."""
    tmp = tmp_path_factory.mktemp("moto")
    endpoint = start_s3(tmp, "mlbackend-tests")
    saved = {k: os.environ.get(k) for k in aws_env(tmp)}
    os.environ.update(aws_env(tmp))
    yield endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    stop(endpoint.proc)


@pytest.fixture(scope="module")
def small_training() -> Iterator[None]:
    """Trainings in this process run a few epochs: for the modules that test
    what happens around a training (storage, routes, answers), not the
    training (`pytestmark = pytest.mark.usefixtures("small_training")`).
    What they train is still a real model, saved, read and predicted with."""
    from mlbackend import training

    quick = functools.partial(training.TrainingOptions, epochs=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "TrainingOptions", quick)
        yield
