"""Hostile input, property-based: whatever the file, the dataset reader gives a
clean dataset or a `BackendError` (status 1, a bounded message), and the
program answers a contract JSON, never a traceback; memory stays bounded.

`make test` runs a few examples of each; `make fuzz` thousands (see hostile.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from conftest import backend_env, moodle
from hostile import (any_bytes, check_answer, check_predictions, datasets, deflated_npz,
                     examples)
from mlbackend import dataset
from mlbackend.contract import BackendError

F32_MAX = float(np.finfo(np.float32).max)
HEAD = 'nfeatures,targetclasses,targettype\n3,"[0,1]",discrete\n'


@pytest.fixture(scope="module")
def traced() -> Iterator[None]:
    """tracemalloc on for the module (NumPy reports its arrays to it too)."""
    from mlbackend.tf import import_tensorflow

    import_tensorflow()  # before tracing: importing it is not the reader's memory
    tracemalloc.start()
    yield
    tracemalloc.stop()


def read_all_ways(path: str) -> None:
    """Both readers, both number decoders: each a valid dataset or a BackendError;
    the peak of memory they allocate is bounded by the file's size; the two
    decoders of training files agree (training and evaluation read with
    TensorFlow's, the in-process tests and tools with NumPy's)."""
    size = os.path.getsize(path)
    outcomes = []
    for read in (lambda: dataset.read_training(path),
                 lambda: dataset.read_training(path, tensorflow=True),
                 lambda: dataset.read_prediction(path)):
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        try:
            ds = read()
        except BackendError as exc:
            assert exc.status == 1
            assert isinstance(exc.message, str) and 0 < len(exc.message) <= 1000, exc.message
            event("refused: " + exc.message.split(": ", 1)[-1][:30])
            outcomes.append(exc.message)
        else:
            check_dataset(ds)
            event("read")
            outcomes.append((ds.X.tolist(), ds.y.tolist() if ds.y is not None else None))
        peak = tracemalloc.get_traced_memory()[1] - before
        assert peak <= 2 * dataset.BLOCK_BYTES + 64 * size, f"{peak} bytes for a {size}-byte file"
    assert outcomes[0] == outcomes[1], "the NumPy and TensorFlow decoders disagree"


def check_dataset(ds: dataset.Dataset) -> None:
    assert ds.X.dtype == np.float32 and ds.X.ndim == 2
    assert ds.X.shape == (ds.nrows, ds.nfeatures) and ds.nrows >= 1
    assert np.all(np.abs(ds.X) <= F32_MAX)
    assert len(ds.feature_names) == ds.nfeatures
    assert len(set(ds.classes)) == len(ds.classes) >= 2
    if ds.y is not None:
        assert ds.y.shape == (ds.nrows,) and set(ds.y.tolist()) <= set(ds.classes)
    else:
        assert len(ds.sample_ids) == ds.nrows and all(ds.sample_ids)


@settings(max_examples=examples(300, 2500))
@given(data=datasets())
@example(data=('nfeatures,targetclasses\n300,"[0,1]"\n' + ",".join(["f"] * 301) + "\n"
               + ",".join(["0"] * 301) + "\n" * 20000).encode())
@example(data=(HEAD + "f1,f2,f3,t\n" + "1,nan,inf,0\n").encode())
@example(data=b'nfeatures,targetclasses\n2,"[NaN,1]"\na,b,t\n1,1,1\n')
@example(data=b'nfeatures,targetclasses\n2,"[1e400,0]"\na,b,t\n1,1,0\n')
@example(data=b'\xef\xbb\xbfnfeatures,targetclasses\r\n2,"[0,1]"\r\na,b,t\r\n"1,5",1,0\r\n')
def test_the_reader_answers_every_dataset(traced, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "d.csv"
    path.write_bytes(data)
    read_all_ways(str(path))


@settings(max_examples=examples(100, 1000))
@given(data=any_bytes())
def test_the_reader_answers_arbitrary_bytes(traced, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "d.csv"
    path.write_bytes(data)
    read_all_ways(str(path))


ENORMOUS = {
    # a line longer than the reader accepts: refused before it is read whole
    "one enormous line": (HEAD + "f1,f2,f3,t\n" + "0," * (5 << 20) + "1\n", "longer than"),
    # under the line limit, but a million and a half cells in one row
    "millions of cells": (HEAD + "f1,f2,f3,t\n" + "0," * 1_500_000 + "1\n", "1500001 cells"),
    "millions of names": (HEAD + "f," * 1_500_000 + "t\n0,0,0,1\n", "but it names 1500001"),
    "millions declared": ('nfeatures,targetclasses\n2000000,"[0,1]"\n' + "f," * 2_000_000 +
                          "t\n0,1\n", "at most 10000 features"),
}


@pytest.mark.parametrize("case", sorted(ENORMOUS))
def test_enormous_lines_are_refused_with_bounded_memory(traced, tmp_path, case):
    text, words = ENORMOUS[case]
    path = tmp_path / "wide.csv"
    path.write_text(text)
    for read in (lambda: dataset.read_training(str(path)),
                 lambda: dataset.read_training(str(path), tensorflow=True),
                 lambda: dataset.read_prediction(str(path))):
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        with pytest.raises(BackendError) as err:
            read()
        peak = tracemalloc.get_traced_memory()[1] - before
        assert words in err.value.message
        # A line is held whole: at most MAX_LINE_BYTES, plus its cells once split
        # (a str object for each of a million one-letter names: about 10 times).
        assert peak <= 12 * dataset.MAX_LINE_BYTES, f"{peak} bytes"


# --------------------------------------------------------------------------
# The program, as Moodle runs it: a process per call


@pytest.fixture(scope="module")
def model_3(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 3-feature binary model trained through the Moodle argv, and a good
    prediction file with its answer."""
    tmp = tmp_path_factory.mktemp("fuzzmodel")
    rng = np.random.default_rng(3)
    X = np.round(rng.uniform(-1, 1, (60, 3)), 2)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    train = tmp / "train.csv"
    train.write_text(HEAD + "f1,f2,f3,target\n" +
                     "".join(f"{a},{b},{c},{t}\n" for (a, b, c), t in zip(X, y)))
    predict = tmp / "predict.csv"
    predict.write_text(HEAD + "sampleid,f1,f2,f3\n" +
                       "".join(f"s{i},{a},{b},{c}\n" for i, (a, b, c) in enumerate(X[:10])))
    outdir = tmp / "model"
    assert moodle("training", "fuzz", outdir, train).rc == 0
    return {"dir": outdir, "predict": predict}


def model_predicts(model: dict[str, Any]) -> None:
    r = moodle("prediction", "fuzz", model["dir"], model["predict"])
    answer = check_answer(r.rc, r.stdout, r.stderr, (0,))
    check_predictions(answer, 2, ["0", "1"])


@settings(max_examples=examples(4, 100))
@given(data=datasets(features=st.just(3), predictions=st.just(False)))
@example(data=b'nfeatures,targetclasses\n3,"[-5,0]"\na,b,c,t\n1,1,0,0\n1,0,1,-5\n')
def test_training_answers_every_file_and_keeps_the_model(model_3, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("train") / "d.csv"
    path.write_bytes(data)
    model_file = model_3["dir"] / "classifier" / "model.npz"
    before = model_file.read_bytes()
    r = moodle("training", "fuzz", model_3["dir"], path)
    check_answer(r.rc, r.stdout, r.stderr, (0, 1, 8))
    event(f"status {r.rc}")
    if r.rc != 0:
        assert model_file.read_bytes() == before
    model_predicts(model_3)


@settings(max_examples=examples(12, 400))
@given(data=st.one_of(datasets(features=st.just(3), predictions=st.just(True)), datasets(),
                      any_bytes()))
def test_prediction_answers_every_file(model_3, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("predict") / "d.csv"
    path.write_bytes(data)
    r = moodle("prediction", "fuzz", model_3["dir"], path)
    answer = check_answer(r.rc, r.stdout, r.stderr, (0, 1))
    event(f"status {r.rc}")
    if r.rc == 0:
        check_predictions(answer, 2, ["0", "1"])


# --------------------------------------------------------------------------
# Hostile model files (import)


def test_a_model_file_that_unpacks_to_gigabytes_is_refused_unread(tmp_path):
    importdir = tmp_path / "import"
    importdir.mkdir()
    deflated_npz(importdir / "model.npz", "layer0_kernel.npy", 300)
    assert (importdir / "model.npz").stat().st_size < 1 << 20
    # The peak resident memory of the program itself (VmHWM: getrusage's
    # maxrss would count the test process it was forked from).
    code = ("import sys\nfrom mlbackend.cli import main\nrc = main(sys.argv[1:])\n"
            "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print('MAXRSS', peak.split()[1], file=sys.stderr)\nsys.exit(rc)\n")
    p = subprocess.run([sys.executable, "-c", code, "-m", "moodlemlbackend.import", "fuzz",
                        str(tmp_path / "imported"), str(importdir)], capture_output=True,
                       text=True, env=backend_env(), stdin=subprocess.DEVNULL)
    answer = check_answer(p.returncode, p.stdout, p.stderr, (1,))
    assert "unpacks to" in answer["info"][0]
    maxrss_kib = int(p.stderr.split("MAXRSS ")[1].split()[0])
    assert maxrss_kib < 300 * 1024  # the 300 MiB were never allocated


@pytest.mark.parametrize("damage", ["NaN mean", "infinite scale", "huge weights"])
def test_a_model_with_unusable_numbers_is_refused_or_answers_numbers(model_3, tmp_path, damage):
    """A crafted model.npz (Moodle's import) with numbers that are not, or
    that overflow: refused at import, or at prediction, never a 'nan' answer."""
    with np.load(model_3["dir"] / "classifier" / "model.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    name, value = {"NaN mean": ("mean", np.nan), "infinite scale": ("scale", np.inf),
                   "huge weights": ("layer0_kernel", 3e38)}[damage]
    arrays[name] = np.full_like(arrays[name], value)
    importdir = tmp_path / "import"
    importdir.mkdir()
    np.savez(importdir / "model.npz", **arrays)
    r = moodle("import", "crafted", tmp_path / "crafted", importdir)
    if r.rc == 0:
        r = moodle("prediction", "crafted", tmp_path / "crafted", model_3["predict"])
        answer = check_answer(r.rc, r.stdout, r.stderr, (0, 1))
        if r.rc == 0:
            check_predictions(answer, 2, ["0", "1"])
    else:
        check_answer(r.rc, r.stdout, r.stderr, (1,))


def test_inputs_that_overflow_float32_still_get_probabilities(model_3, tmp_path):
    big = 3.4e38
    path = tmp_path / "p.csv"
    path.write_text(HEAD + "sampleid,f1,f2,f3\n" + f"a,{big},{-big},{big}\nb,{-big},{big},0\n"
                    "c,0.5,0,-0.5\n")
    r = moodle("prediction", "fuzz", model_3["dir"], path)
    answer = check_answer(r.rc, r.stdout, r.stderr, (0,))
    check_predictions(answer, 2, ["0", "1"])
