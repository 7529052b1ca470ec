"""Hostile input, property-based: whatever the file, the dataset reader gives a
clean dataset or a `BackendError` (status 1, a bounded message), and the
program answers a contract JSON, never a traceback; memory stays bounded.

`make test` runs a few examples of each; `make fuzz` thousands (see hostile.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.hostile import (
    FUZZ,
    any_bytes,
    bundle_entry,
    check_answer,
    check_predictions,
    datasets,
    deflated_npz,
    examples,
    model_files,
    proto_field,
    write_table,
)
from helpers.run import backend_env, moodle, moodle_in_process
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from mlbackend import dataset
from mlbackend.contract import BackendError

F32_MAX = float(np.finfo(np.float32).max)
HEAD = 'nfeatures,targetclasses,targettype\n3,"[0,1]",discrete\n'


@pytest.fixture(scope="module")
def traced() -> Iterator[None]:
    """tracemalloc on for the module (NumPy reports its arrays to it too),
    and TensorFlow's CSV decoder used for small files as for large ones."""
    from mlbackend.tf import import_tensorflow

    # Before tracing: importing it (the decoder's modules too, which load when
    # first used) is not the reader's memory.
    assert import_tensorflow().io.decode_csv is not None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dataset, "TF_MIN_BYTES", 0)
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
    for read in (
        lambda: dataset.read_training(path),
        lambda: dataset.read_training(path, tensorflow=True),
        lambda: dataset.read_prediction(path),
    ):
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


@settings(max_examples=examples(150, 2500))
@given(data=datasets())
@example(
    data=(
        'nfeatures,targetclasses\n300,"[0,1]"\n'
        + ",".join(["f"] * 301)
        + "\n"
        + ",".join(["0"] * 301)
        + "\n" * 20000
    ).encode()
)
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
    "millions declared": (
        'nfeatures,targetclasses\n2000000,"[0,1]"\n' + "f," * 2_000_000 + "t\n0,1\n",
        "at most 10000 features",
    ),
}


@pytest.mark.parametrize("case", sorted(ENORMOUS))
def test_enormous_lines_are_refused_with_bounded_memory(traced, tmp_path, case):
    text, words = ENORMOUS[case]
    path = tmp_path / "wide.csv"
    path.write_text(text)
    for read in (
        lambda: dataset.read_training(str(path)),
        lambda: dataset.read_training(str(path), tensorflow=True),
        lambda: dataset.read_prediction(str(path)),
    ):
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
    train.write_text(
        HEAD + "f1,f2,f3,target\n" + "".join(f"{a},{b},{c},{t}\n" for (a, b, c), t in zip(X, y))
    )
    predict = tmp / "predict.csv"
    predict.write_text(
        HEAD
        + "sampleid,f1,f2,f3\n"
        + "".join(f"s{i},{a},{b},{c}\n" for i, (a, b, c) in enumerate(X[:10]))
    )
    outdir = tmp / "model"
    assert moodle_in_process("training", "fuzz", outdir, train).rc == 0
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
    # A process per training under make fuzz (a crash must be a signal seen
    # here); make test's few examples train in process.
    train = moodle if FUZZ else moodle_in_process
    r = train("training", "fuzz", model_3["dir"], path)
    check_answer(r.rc, r.stdout, r.stderr, (0, 1, 8))
    event(f"status {r.rc}")
    if r.rc != 0:
        assert model_file.read_bytes() == before
    model_predicts(model_3)


@settings(max_examples=examples(12, 400))
@given(
    data=st.one_of(
        datasets(features=st.just(3), predictions=st.just(True)), datasets(), any_bytes()
    )
)
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
    code = (
        "import sys\nfrom mlbackend.cli import main\nrc = main(sys.argv[1:])\n"
        "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print('MAXRSS', peak.split()[1], file=sys.stderr)\nsys.exit(rc)\n"
    )
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "-m",
            "moodlemlbackend.import",
            "fuzz",
            str(tmp_path / "imported"),
            str(importdir),
        ],
        capture_output=True,
        text=True,
        env=backend_env(),
        stdin=subprocess.DEVNULL,
    )
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
    name, value = {
        "NaN mean": ("mean", np.nan),
        "infinite scale": ("scale", np.inf),
        "huge weights": ("layer0_kernel", 3e38),
    }[damage]
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
    path.write_text(
        HEAD + "sampleid,f1,f2,f3\n" + f"a,{big},{-big},{big}\nb,{-big},{big},0\nc,0.5,0,-0.5\n"
    )
    r = moodle("prediction", "fuzz", model_3["dir"], path)
    answer = check_answer(r.rc, r.stdout, r.stderr, (0,))
    check_predictions(answer, 2, ["0", "1"])


# --------------------------------------------------------------------------
# Model files, property-based: ours (model.npz) and the old backend's
# (pickles and TensorFlow checkpoints). Each reader gives a usable model or a
# BackendError with a bounded message; never a crash, never unbounded memory.


def bounded_refusal(exc: BackendError) -> None:
    assert exc.status == 1
    assert isinstance(exc.message, str) and 0 < len(exc.message) <= 1500, exc.message


@settings(max_examples=examples(150, 3000))
@given(data=model_files())
@example(data=b"PK\x05\x06" + bytes(18))
def test_every_model_file_loads_checked_or_is_refused(traced, tmp_path_factory, data):
    from mlbackend import store

    path = tmp_path_factory.mktemp("npz") / "model.npz"
    path.write_bytes(data)
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        model = store.read_file(str(path))
    except BackendError as exc:
        bounded_refusal(exc)
        event("refused: " + exc.message.split("(", 1)[-1][:30])
        return
    assert model is not None
    X = np.random.default_rng(0).normal(size=(50, model.nfeatures)).astype(np.float32)
    try:
        proba = model.predict_proba(X)
    except BackendError as exc:
        bounded_refusal(exc)
        event("refused at prediction")
    else:
        event("predicts")
        assert proba.shape == (50, len(model.classes)) and np.all(np.isfinite(proba))
        np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
    peak = tracemalloc.get_traced_memory()[1] - before
    assert peak <= 8 * len(data) + (16 << 20), f"{peak} bytes for a {len(data)}-byte model"


def shared_list(levels: int) -> Any:
    value: Any = []
    for _ in range(levels):
        value = [value, value]
    return value


PICKLE_VALUES = st.sampled_from(
    [
        None,
        True,
        0,
        2,
        -1,
        1 << 40,
        10**5000,
        1.5,
        float("nan"),
        "x",
        "x" * 10_000,
        b"bytes",
        (1, 2),
        {"a": 1},
        {(1, 2): 3},
        shared_list(50),
        np.arange(3),
        np.zeros((2, 2)),
        np.float64(2.0),
        np.int64(2),
        np.zeros(3, np.uint8),
    ]
)


@settings(max_examples=examples(100, 2000))
@given(
    changes=st.dictionaries(
        st.sampled_from(
            ["n_classes", "n_hidden_layers", "n_features", "variable_columns", "n_epoch", "other"]
        ),
        PICKLE_VALUES,
        max_size=3,
    ),
    damage=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
    cut=st.one_of(st.none(), st.integers(0, 10_000)),
)
@example(changes={}, damage=[], cut=40)  # cut inside a 4-byte integer: struct.error
def test_every_legacy_pickle_is_read_or_refused(tmp_path_factory, changes, damage, cut):
    from helpers.legacy_files import legacy_pickle, tf_state

    from mlbackend import legacy

    data = bytearray(legacy_pickle(tf_state(3, [0, 1, 2], **changes)))
    for at, value in damage:
        data[at % len(data)] = value
    if cut is not None:
        data = data[:cut]
    path = tmp_path_factory.mktemp("pkl") / "classifier.pkl"
    path.write_bytes(bytes(data))
    try:
        state = legacy.read_pickle(str(path))
    except BackendError as exc:
        bounded_refusal(exc)
        event("refused")
        return
    event("read")
    json.dumps(legacy._plain_settings(state))  # what a converted model keeps is JSON


@settings(max_examples=examples(100, 3000))
@given(
    dtype=st.integers(-3, 300),
    dims=st.lists(st.integers(-(1 << 62), 1 << 62) | st.integers(0, 9), max_size=10),
    offset=st.integers(-5, 1 << 62) | st.integers(0, 200),
    size=st.integers(-5, 1 << 62) | st.integers(0, 200),
    shard=st.integers(-2, 3),
    garbage=st.one_of(st.none(), st.binary(max_size=40)),
)
def test_every_checkpoint_entry_is_read_or_refused(
    tmp_path_factory, dtype, dims, offset, size, shard, garbage
):
    """TensorFlow aborted on such entries; our reader answers each."""
    from mlbackend import checkpoint

    d = tmp_path_factory.mktemp("ckpt")
    prefix = d / "variables"
    (d / "variables.data-00000-of-00001").write_bytes(bytes(range(200)))
    header = proto_field(1, 1)
    entry = garbage if garbage is not None else bundle_entry(dtype, dims, offset, size, shard)
    write_table(Path(str(prefix) + ".index"), {"": header, "w": entry})
    try:
        tensor = checkpoint.Checkpoint(str(prefix)).tensor("w")
    except BackendError as exc:
        bounded_refusal(exc)
        event("refused")
        return
    event("read")
    assert tensor.dtype.kind == "f" and tensor.nbytes <= 200
