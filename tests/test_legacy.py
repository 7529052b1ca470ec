"""Models of the old backend, moodlemlbackend: conversion, import, prediction
and refusal, through Moodle's argv.

The fixtures are built here, laid out as moodlemlbackend 3.0.5 lays them out
(checked against a real one by hand): a joblib pickle of a
`moodlemlbackend.model.tensor.TF` object with the same opcodes and globals
(written by a pure-Python pickler that appends the array bytes after the
wrapper's BUILD, as joblib does, with stand-in classes registered under the
old module names only while writing), beside a SavedModel whose variables
carry the tf.keras names `layer_with_weights-N/{kernel,bias}`. The expected
answers come from a Keras network with the same weights, not from our code.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.hostile import DTYPE_STATES, DtypeWithState, bundle_entry, write_table
from helpers.legacy_files import (
    HIDDEN,
    VARIABLE_COLUMNS,
    check_predictions,
    legacy_pickle,
    old_module_names,
    outputdir_with,
    tf_state,
)
from helpers.run import moodle, moodle_in_process

from mlbackend import legacy, store, transfer
from mlbackend.contract import BackendError
from mlbackend.model import Model
from mlbackend.model.format import from_arrays, to_arrays


def read(out: Path, nfeatures: int | None = None) -> Model | None:
    stored = store.read(str(out), nfeatures)
    return stored.model if stored is not None else None


# --------------------------------------------------------------------------
# The fixture is what moodlemlbackend writes


#: moodlemlbackend 3.0.5's classifier.pkl for a site-b model (in the shared
#: example, not in this repository): its SHA-256 and the values it holds.
REAL_PICKLE_SHA256 = "f306fcc4c2286d6e67e1a6d4b088fce9c73bc300281e502f5a436f725efd54b8"
REAL_PICKLE_STATE = {
    "n_epoch": 110,
    "batch_size": 1414,
    "n_features": 176,
    "n_hidden": 58,
    "n_hidden_layers": 2,
    "n_classes": 2,
}
REAL_VARIABLE_COLUMNS = (
    "1 3 7 8 10 18 19 23 31 32 33 35 36 41 45 46 49 52 59 61 62 63 64 65 66 67 71 72 73 75 76 "
    "79 80 81 82 83 85 87 88 91 95 96 98 103 108 109 117 119 122 124 131 135 136 137 140 141 "
    "142 143 150 153 160 164 165 169 172 175 178 179 180 186 188 191 193 195 200 203 204 205 "
    "206 208 212 214 216 218 219 223 225 227 230 233 234 235 236 238 242 246 248 249 251 252 "
    "253 254 257 258 260 261 262 263 267 268 269 270 271 274 275 277 278 279 280 281 282 283 "
    "285 286 287 291 292 294 295 296 298 299 303 305 307 308 310 313 316 320 321 325 327 329 "
    "334 341 342 343 344 346 347 349 353 354 356 361 362 363 365 369 372 379 384 386 397 399 "
    "400 406 407 408 409 412 416 418 419 420"
)


def test_the_fixture_writer_reproduces_a_real_moodlemlbackend_pickle() -> None:
    """Given the real file's values, the fixture writer produces that file
    byte for byte: the same opcodes, globals, memo and joblib array layout."""
    import hashlib

    columns = np.array([int(c) for c in REAL_VARIABLE_COLUMNS.split()], dtype=np.int64)
    data = legacy_pickle(dict(REAL_PICKLE_STATE, variable_columns=columns))
    assert hashlib.sha256(data).hexdigest() == REAL_PICKLE_SHA256
    state = legacy.read_pickle_bytes(data, "real")
    assert {k: state[k] for k in REAL_PICKLE_STATE} == REAL_PICKLE_STATE
    assert np.array_equal(state["variable_columns"], columns)


def test_reads_the_fixture_without_moodlemlbackend_or_joblib(legacy3: dict[str, Any]) -> None:
    before = set(sys.modules)
    state = legacy.read_pickle(str(legacy3["dir"] / "classifier.pkl"))
    assert state["n_hidden_layers"] == 2 and state["n_features"] == len(VARIABLE_COLUMNS)
    assert state["variable_columns"].tolist() == VARIABLE_COLUMNS
    # (joblib may be installed beside the tests: scikit-learn for the bench)
    imported = {m.split(".")[0] for m in set(sys.modules) - before}
    assert not imported & {"moodlemlbackend", "joblib"}, imported


# --------------------------------------------------------------------------
# Conversion on first use, through Moodle's argv


def test_prediction_converts_a_3x_model_once_and_keeps_the_old_files(
    tmp_path: Path, legacy3: dict[str, Any], binary_data: dict[str, Any]
) -> None:
    out = outputdir_with(tmp_path, legacy3["dir"])
    r = moodle_in_process("prediction", "m1", out, binary_data["predict"])
    assert r.rc == 0, r.stderr
    check_predictions(r.json, legacy3["proba"], legacy3["ids"])
    assert "converted" in r.stderr
    cls = out / "classifier"
    assert (cls / "model.npz").is_file()
    aside = cls / legacy.ASIDE_DIR
    original = (legacy3["dir"] / "classifier.pkl").read_bytes()
    assert (aside / "classifier.pkl").read_bytes() == original
    assert (aside / "model.ckpt" / "variables" / "variables.index").is_file()
    assert not (cls / "classifier.pkl").exists() and not (cls / "model.ckpt").exists()
    model = read(out)
    assert model is not None and model.nfeatures == 20 and model.classes == [0, 1]
    assert model.columns.tolist() == VARIABLE_COLUMNS and model.activation == "relu"

    again = moodle_in_process("prediction", "m1", out, binary_data["predict"])
    assert again.rc == 0 and again.json == r.json
    assert "converted" not in again.stderr


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under `root`: its size and modification time."""
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def test_reading_a_model_never_writes(tmp_path: Path, legacy3: dict[str, Any]) -> None:
    """Reading converts an old model in memory, and leaves a damaged file and
    a killed writer's leftovers where they are: the writes are the actions'
    named steps (save_converted, set_aside_damaged, tidy)."""
    out = outputdir_with(tmp_path, legacy3["dir"])
    (out / "classifier" / ".tmp-killed.npz").write_bytes(b"half a model")
    before = tree(out)
    stored = store.read(str(out), nfeatures=20)
    assert stored is not None and stored.converted and stored.model.format_version == 1
    assert tree(out) == before
    (out / "classifier" / "model.npz").write_bytes(b"not a model")
    before = tree(out)
    with pytest.raises(store.DamagedModel):
        store.read(str(out), nfeatures=20)
    assert tree(out) == before


def test_training_continues_from_a_3x_model(
    tmp_path: Path, legacy3: dict[str, Any], binary_data: dict[str, Any]
) -> None:
    out = outputdir_with(tmp_path, legacy3["dir"])
    r = moodle_in_process("training", "m1", out, binary_data["train"])
    assert r.rc == 0 and r.json == {"status": 0, "info": []}, r.stderr
    model = read(out)
    assert model is not None and model.history["trainings"] == 1
    # Same network shape and columns as the old model: training went on from it.
    assert model.hidden_units == [HIDDEN, HIDDEN]
    assert model.columns.tolist() == VARIABLE_COLUMNS
    assert (out / "classifier" / legacy.ASIDE_DIR / "classifier.pkl").is_file()
    p = moodle_in_process("prediction", "m1", out, binary_data["predict"])
    assert p.rc == 0 and len(p.json["predictions"]) == len(legacy3["ids"])


def test_evaluation_of_a_trained_3x_model(
    tmp_path: Path, legacy3: dict[str, Any], binary_data: dict[str, Any]
) -> None:
    trained = outputdir_with(tmp_path, legacy3["dir"])
    r = moodle_in_process(
        "evaluation", "m1", tmp_path / "eval", binary_data["train"], 0.7, 0.05, 10, trained
    )
    assert r.rc in (0, 4), r.stderr
    answer = r.json
    assert 0.0 <= answer["accuracy"] <= 1.0 and "auc" in answer
    assert (trained / "classifier" / "model.npz").is_file()


def test_a_3x_model_needs_the_columns_it_used(tmp_path: Path, legacy3: dict[str, Any]) -> None:
    from mlbackend import synthetic

    small = synthetic.generate(30, 10, seed=5)
    path = str(tmp_path / "ten.csv")
    synthetic.write_prediction(path, small)
    out = outputdir_with(tmp_path, legacy3["dir"])
    r = moodle_in_process("prediction", "m1", out, path)
    assert r.rc == 1 and r.json["status"] == 1
    assert "uses feature number 19" in r.json["info"][0]
    assert (out / "classifier" / "classifier.pkl").is_file()  # not converted


# --------------------------------------------------------------------------
# Import and export


def test_import_of_a_2x_export_converts_it(
    tmp_path: Path, export2: dict[str, Any], binary_data: dict[str, Any]
) -> None:
    out = tmp_path / "model"
    r = moodle_in_process("import", "m2", out, export2["dir"])
    assert r.rc == 0 and r.last == "Ok", r.stderr
    model = read(out)
    assert model is not None and model.activation == "tanh" and model.nfeatures == 20
    p = moodle_in_process("prediction", "m2", out, binary_data["predict"])
    assert p.rc == 0, p.stderr
    check_predictions(p.json, export2["proba"], export2["ids"])


def test_import_of_a_3x_model_then_export_and_import_again(
    tmp_path: Path, legacy3: dict[str, Any], binary_data: dict[str, Any]
) -> None:
    out = tmp_path / "model"
    r = moodle_in_process("import", "m3", out, legacy3["dir"])
    assert r.rc == 0 and r.last == "Ok", r.stderr
    # Checked, stored as it is: converted with the first dataset.
    assert (out / "classifier" / "classifier.pkl").is_file()
    exported = moodle_in_process("export", "m3", out, tmp_path / "export")
    assert exported.rc == 0 and exported.last == str(tmp_path / "export")
    again = tmp_path / "again"
    r = moodle_in_process("import", "m3", again, tmp_path / "export")
    assert r.rc == 0 and r.last == "Ok", r.stderr
    p = moodle_in_process("prediction", "m3", again, binary_data["predict"])
    assert p.rc == 0, p.stderr
    check_predictions(p.json, legacy3["proba"], legacy3["ids"])


def test_import_over_a_model_moves_old_files_aside(
    tmp_path: Path, legacy3: dict[str, Any], export2: dict[str, Any]
) -> None:
    out = outputdir_with(tmp_path, legacy3["dir"])
    transfer.import_model(str(out), str(export2["dir"]))
    cls = out / "classifier"
    assert (cls / "model.npz").is_file() and not (cls / "classifier.pkl").exists()
    assert (cls / legacy.ASIDE_DIR / "classifier.pkl").is_file()
    assert read(out).activation == "tanh"  # type: ignore[union-attr]


def test_a_tanh_model_is_format_version_2_and_only_that() -> None:
    from helpers.models import model

    m = model(2, (3,), seed=1, activation="tanh", bias=0.3)
    assert m.format_version == 2
    arrays = to_arrays(m)
    assert json.loads(str(arrays["meta"]))["format_version"] == 2
    back = from_arrays(arrays, "test")
    assert back.activation == "tanh"
    X = np.array([[0.5, -1.0]], dtype=np.float32)
    np.testing.assert_allclose(back.predict_proba(X), m.predict_proba(X))
    # The version is stated, not worked out: a tanh network is not version 1,
    # and a file that says version 1 with tanh layers is refused.
    with pytest.raises(ValueError, match="not of format version 1"):
        to_arrays(Model(**{**m.__dict__, "format_version": 1}))
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps({**meta, "format_version": 1}))
    with pytest.raises(BackendError, match="unknown activation 'tanh' for format version 1"):
        from_arrays(arrays, "test")


# --------------------------------------------------------------------------
# Refusal: nothing in a hostile file runs


class RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> Any:
        return (os.system, (self.command,))


class RunsPython:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (exec, (f"open({str(self.path)!r}, 'w').close()",))


def hostile(kind: str, marker: Path) -> bytes:
    if kind == "os.system":
        return pickle.dumps(RunsCommand(f"touch {marker}"), protocol=4)
    if kind == "exec":
        return pickle.dumps(RunsPython(marker), protocol=4)
    # Inside a genuine-looking classifier: the refusal comes mid-stream.
    # (No array in it, so that plain pickle can run it for the control.)
    return legacy_pickle(tf_state(len(VARIABLE_COLUMNS), n_epoch=RunsCommand(f"touch {marker}")))


@pytest.mark.parametrize("kind", ["os.system", "exec", "inside the classifier"])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(
    tmp_path: Path, legacy3: dict[str, Any], binary_data: dict[str, Any], kind: str
) -> None:
    # The payload is live: a plain pickle.loads creates its file.
    control = tmp_path / "control"
    with old_module_names():
        pickle.loads(hostile(kind, control))
    assert control.exists()

    marker = tmp_path / "pwned"
    out = outputdir_with(tmp_path, legacy3["dir"])
    (out / "classifier" / "classifier.pkl").write_bytes(hostile(kind, marker))
    # As Moodle runs it, then each other way in: nothing runs, whichever.
    r = moodle("prediction", "evil", out, binary_data["predict"])
    assert r.rc == 1 and r.json["status"] == 1
    assert "refused" in r.json["info"][0] and "nothing in it was run" in r.json["info"][0]
    r = moodle_in_process("training", "evil", out, binary_data["train"])
    assert r.rc == 1 and r.json["status"] == 1
    assert "refused" in r.json["info"][0] and "nothing in it was run" in r.json["info"][0]
    r = moodle_in_process("import", "evil", tmp_path / "other", out / "classifier")
    assert r.rc == 1 and "refused" in r.json["info"][0]
    assert not marker.exists()
    assert not (out / "classifier" / "model.npz").exists()
    assert (out / "classifier" / "classifier.pkl").is_file()  # left as it was
    assert not (tmp_path / "other" / "classifier" / "classifier.pkl").exists()


@pytest.mark.parametrize(
    "module,name",
    [
        ("builtins", "eval"),
        ("numpy", "load"),
        ("moodlemlbackend.model.tensor", "build_graph"),
        ("copyreg", "_reconstructor"),
    ],
)
def test_the_unpickler_refuses_any_other_global(tmp_path: Path, module: str, name: str) -> None:
    data = b"\x80\x04c" + module.encode() + b"\n" + name.encode() + b"\n)R."
    path = tmp_path / "classifier.pkl"
    path.write_bytes(data)
    with pytest.raises(BackendError, match=f"refused the global {module}.{name}"):
        legacy.read_pickle(str(path))


@pytest.mark.parametrize(
    "stream,message",
    [
        # numpy.ndarray((10**9,)): an allowed name, called to allocate 8 GB
        (b"cnumpy\nndarray\n(J\x00\xca\x9a;tR.", "calling ndarray"),
        (b"cnumpy\nndarray\n)\x81.", "constructing ndarray"),
        # an allowed function given attributes (BUILD with slot state calls setattr)
        (b"cnumpy\ndtype\nN}(X\x04\x00\x00\x00hack\x88u\x86b.", "setting the state of _safe_dtype"),
        (b"(cmoodlemlbackend.model.tensor\nTF\no.", "INST/OBJ"),
        (b"cnumpy\nndarray\n)}\x92.", "NEWOBJ_EX"),
    ],
)
def test_allowed_names_cannot_be_misused(tmp_path: Path, stream: bytes, message: str) -> None:
    """Each opcode that builds or calls goes through `SafeUnpickler`'s hook
    in the pure-Python unpickler's private dispatch table: a Python whose
    unpickler dispatches otherwise fails here."""
    path = tmp_path / "classifier.pkl"
    path.write_bytes(b"\x80\x04" + stream)
    with pytest.raises(BackendError, match=message):
        legacy.read_pickle(str(path))
    assert not hasattr(legacy._safe_dtype, "hack")


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "classifier.pkl"
    with old_module_names() as cls:
        obj = cls["TF"]()
        obj.variable_columns = np.array([1, "x"], dtype=object)
        path.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(BackendError, match="refused"):
        legacy.read_pickle(str(path))


def damaged(d: Path, how: str) -> None:
    pkl = d / "classifier.pkl"
    if how == "truncated pickle":
        pkl.write_bytes(pkl.read_bytes()[:-40])
    elif how == "pickle cut in its header":
        pkl.write_bytes(pkl.read_bytes()[:60])
    elif how == "not a pickle":
        pkl.write_bytes(b"\x1f\x8b compressed or anything else")
    elif how == "columns do not match the network":
        pkl.write_bytes(legacy_pickle(tf_state(len(VARIABLE_COLUMNS) + 1, VARIABLE_COLUMNS + [19])))
    elif how == "pickle contradicts itself":
        pkl.write_bytes(legacy_pickle(tf_state(len(VARIABLE_COLUMNS) + 1, VARIABLE_COLUMNS)))
    elif how == "wrong layer count":
        pkl.write_bytes(
            legacy_pickle(tf_state(len(VARIABLE_COLUMNS), VARIABLE_COLUMNS, n_hidden_layers=1))
        )
    elif how == "more classes than outputs":
        pkl.write_bytes(
            legacy_pickle(tf_state(len(VARIABLE_COLUMNS), VARIABLE_COLUMNS, n_classes=3))
        )
    elif how == "truncated weights":
        data = d / "model.ckpt" / "variables" / "variables.data-00000-of-00001"
        data.write_bytes(data.read_bytes()[:100])
    elif how == "no weights":
        shutil.rmtree(d / "model.ckpt" / "variables")
    elif how == "no pickle":
        pkl.unlink()
    elif how == "other activation":
        meta = d / "model.ckpt" / "keras_metadata.pb"
        meta.write_bytes(meta.read_bytes().replace(b'"relu"', b'"sigmoid"'))
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how,message",
    [
        ("truncated pickle", "truncated"),
        ("pickle cut in its header", "damaged or truncated"),
        ("not a pickle", "not an uncompressed joblib pickle"),
        ("columns do not match the network", r"wrong shape \(layer 1: \(17, 8\)"),
        ("pickle contradicts itself", "inconsistent: 17 variable columns"),
        ("wrong layer count", "more layers than its settings"),
        ("more classes than outputs", "2 outputs for 3 classes"),
        ("truncated weights", "damaged or truncated"),
        ("no weights", "weights are missing"),
        ("no pickle", "classifier.pkl is missing"),
        ("other activation", "sigmoid"),
    ],
)
def test_a_damaged_3x_model_is_refused_with_a_clear_message(
    tmp_path: Path, legacy3: dict[str, Any], how: str, message: str
) -> None:
    out = outputdir_with(tmp_path, legacy3["dir"])
    damaged(out / "classifier", how)
    with pytest.raises(BackendError, match=message) as err:
        store.read(str(out), nfeatures=20)
    assert err.value.status == 1
    assert not (out / "classifier" / "model.npz").exists()


def test_a_damaged_model_answers_status_1_through_moodle(
    tmp_path: Path, legacy3: dict[str, Any], binary_data: dict[str, Any]
) -> None:
    out = outputdir_with(tmp_path, legacy3["dir"])
    damaged(out / "classifier", "truncated weights")
    r = moodle("prediction", "m1", out, binary_data["predict"])
    assert r.rc == 1 and r.json["status"] == 1
    assert "damaged or truncated" in r.json["info"][0]


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d.update({"initialise-vars/output-bias": [0.1]}), "wrong shape"),
        (lambda d: d.update({"n_hidden": 7}), "n_hidden is 7"),
        (lambda d: d.pop("initialise-vars/hidden-bias"), "hidden-bias is missing"),
        (lambda d: d.update({"n_features": "20"}), "invalid n_features"),
        (lambda d: d["initialise-vars/hidden-bias"].__setitem__(0, "x"), "invalid weights"),
    ],
)
def test_a_bad_2x_export_is_refused(
    tmp_path: Path, export2: dict[str, Any], change: Any, message: str
) -> None:
    doc = json.loads(json.dumps(export2["doc"]))
    change(doc)
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(BackendError, match=message):
        transfer.import_model(str(tmp_path / "model"), str(tmp_path))
    assert not (tmp_path / "model" / "classifier" / "model.npz").exists()


def test_a_truncated_2x_export_is_refused_through_moodle(
    tmp_path: Path, export2: dict[str, Any]
) -> None:
    text = (export2["dir"] / "model.json").read_text()
    (tmp_path / "model.json").write_text(text[: len(text) // 2])
    r = moodle("import", "m2", tmp_path / "model", tmp_path)
    assert r.rc == 1 and "not valid JSON" in r.json["info"][0]


# --------------------------------------------------------------------------
# Hostile old-format files that crashed or exhausted the process (issue 12)


def pickle_with_dtype(name: str, state: tuple[Any, ...]) -> bytes:
    """A classifier.pkl whose variable_columns array has a crafted dtype
    state, its 16 data bytes after it as joblib writes them."""
    with old_module_names() as cls:
        wrapper = cls["NumpyArrayWrapper"]()
        wrapper.__dict__.update(
            subclass=np.ndarray,
            shape=(2,),
            order="C",
            dtype=DtypeWithState(name, state),
            allow_mmap=True,
        )
        obj = cls["TF"]()
        obj.__dict__.update(tf_state(2))
        obj.variable_columns = wrapper
        buf = io.BytesIO()
        pickler = pickle._Pickler(buf, protocol=4)  # type: ignore[attr-defined]
        pickler.dump(obj)
    data = buf.getvalue()
    # The array's bytes follow the wrapper's BUILD in joblib's stream; here
    # they simply follow the pickle, which is as far as a reader gets.
    return data[:-1] + bytes(16) + data[-1:]


@pytest.mark.parametrize("case", sorted(DTYPE_STATES))
def test_a_crafted_dtype_state_is_refused(tmp_path: Path, case: str) -> None:
    name, state = DTYPE_STATES[case]
    path = tmp_path / "classifier.pkl"
    path.write_bytes(pickle_with_dtype(name, state))
    with pytest.raises(BackendError, match="refused") as err:
        legacy.read_pickle(str(path))
    assert err.value.status == 1 and len(err.value.message) < 1000


def test_the_272_byte_dtype_pickle_answers_status_1_through_moodle(
    tmp_path: Path, legacy3: dict[str, Any], binary_data: dict[str, Any]
) -> None:
    """It was a SIGSEGV; now the contract's answer, for import and prediction."""
    out = outputdir_with(tmp_path, legacy3["dir"])
    name, state = DTYPE_STATES["subarray (the 272-byte crash)"]
    (out / "classifier" / "classifier.pkl").write_bytes(pickle_with_dtype(name, state))
    r = moodle("prediction", "m", out, binary_data["predict"])
    assert r.rc == 1 and r.json["status"] == 1 and "refused" in r.json["info"][0], r.stderr
    r = moodle("import", "m", tmp_path / "other", out / "classifier")
    assert r.rc == 1 and r.json["status"] == 1 and "refused" in r.json["info"][0], r.stderr


def shared_nesting(levels: int) -> list[Any]:
    """A list of 2**levels leaves in a pickle of a few hundred bytes (the memo)."""
    value: list[Any] = []
    for _ in range(levels):
        value = [value, value]
    return value


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("n_classes", shared_nesting(60), "invalid n_classes"),
        ("n_classes", 10**5000, "invalid n_classes: <an integer of"),
        ("n_hidden_layers", 10**9, "more than 16"),
        ("n_features", 1 << 40, "invalid n_features"),
    ],
    ids=["shared nesting", "5,000 digits", "a billion layers", "2^40 features"],
)
def test_settings_from_the_pickle_are_quoted_bounded(
    tmp_path: Path, legacy3: dict[str, Any], key: str, value: Any, message: str
) -> None:
    out = outputdir_with(tmp_path, legacy3["dir"])
    data = legacy_pickle(tf_state(len(VARIABLE_COLUMNS), VARIABLE_COLUMNS, **{key: value}))
    assert len(data) < 4000
    (out / "classifier" / "classifier.pkl").write_bytes(data)
    with pytest.raises(BackendError, match=message) as err:
        store.read(str(out), nfeatures=20)
    assert len(err.value.message) < 1000


def test_settings_json_cannot_write_are_left_out_of_the_converted_model(
    tmp_path: Path, legacy3: dict[str, Any]
) -> None:
    """An integer over 4,300 digits and a tuple key made json.dumps fail
    ("Unexpected error"); they are not settings, so they are not kept."""
    out = outputdir_with(tmp_path, legacy3["dir"])
    state = tf_state(len(VARIABLE_COLUMNS), VARIABLE_COLUMNS, n_epoch=10**5000)
    state[("a", 1)] = 2
    (out / "classifier" / "classifier.pkl").write_bytes(legacy_pickle(state))
    model = read(out, nfeatures=20)
    assert model is not None
    kept = model.history["legacy_settings"]
    assert "n_epoch" not in kept and kept["n_hidden_layers"] == 2
    store.save_converted(str(out), 20)
    again = store.read(str(out), nfeatures=20)
    assert again is not None and not again.converted  # saved and read back
    assert again.model.history["legacy_settings"] == kept


def crafted_checkpoint(d: Path, how: str) -> None:
    """Rewrite variables.index of the SavedModel in classifier/ `d`: one
    entry changed as a crafted file would, the rest as TensorFlow wrote it."""
    from mlbackend import checkpoint

    prefix = d / "model.ckpt" / "variables" / "variables"
    entries = checkpoint.read_index(str(prefix) + ".index")
    key = "layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    shape = checkpoint.Checkpoint(str(prefix)).shape(key)
    data_size = (prefix.parent / "variables.data-00000-of-00001").stat().st_size
    entries[key] = {
        "dims [-1, 8]": bundle_entry(1, [-1, 8], 0, 64),
        "dims [2^40, 2^40]": bundle_entry(1, [1 << 40, 1 << 40], 0, 1 << 42),
        "dtype 0": bundle_entry(0, list(shape), 0, 4 * math.prod(shape)),
        "dtype 200": bundle_entry(200, list(shape), 0, 4 * math.prod(shape)),
        "dtype string": bundle_entry(7, list(shape), 0, 4 * math.prod(shape)),
        "empty entry": b"",
        "not a protobuf": b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x07garbage",
        "past the data file": bundle_entry(1, list(shape), data_size, 4 * math.prod(shape)),
        "size does not match the shape": bundle_entry(1, list(shape), 0, 8),
        "another shard": bundle_entry(1, list(shape), 0, 4 * math.prod(shape), shard=7),
        "nine dimensions": bundle_entry(1, [1] * 9, 0, 4),
    }[how]
    write_table(Path(str(prefix) + ".index"), entries)


CHECKPOINT_DAMAGE = [
    "dims [-1, 8]",
    "dims [2^40, 2^40]",
    "dtype 0",
    "dtype 200",
    "dtype string",
    "empty entry",
    "not a protobuf",
    "past the data file",
    "size does not match the shape",
    "another shard",
    "nine dimensions",
]


def test_the_table_writer_writes_what_the_reader_reads(
    tmp_path: Path, legacy3: dict[str, Any]
) -> None:
    """Control: the index rewritten unchanged still converts to the same model."""
    from mlbackend import checkpoint

    out = outputdir_with(tmp_path, legacy3["dir"])
    prefix = out / "classifier" / "model.ckpt" / "variables" / "variables"
    write_table(Path(str(prefix) + ".index"), checkpoint.read_index(str(prefix) + ".index"))
    network = legacy.read(str(out / "classifier"))
    got = [a for layer in network.layers for a in (layer.kernel, layer.bias)]
    assert len(got) == len(legacy3["weights"])
    for g, want in zip(got, legacy3["weights"]):
        np.testing.assert_array_equal(g, want)


@pytest.mark.parametrize("how", CHECKPOINT_DAMAGE)
def test_a_crafted_checkpoint_index_is_refused_without_tensorflow(
    tmp_path: Path, legacy3: dict[str, Any], how: str
) -> None:
    out = outputdir_with(tmp_path, legacy3["dir"])
    crafted_checkpoint(out / "classifier", how)
    with pytest.raises(BackendError, match="cannot be read|wrong shape|too large") as err:
        store.read(str(out), nfeatures=20)
    assert err.value.status == 1 and len(err.value.message) < 1000
    assert not (out / "classifier" / "model.npz").exists()


@pytest.mark.parametrize("how", ["dims [-1, 8]", "dtype 200", "not a protobuf"])
def test_a_crafted_checkpoint_answers_status_1_through_moodle(
    tmp_path: Path, legacy3: dict[str, Any], binary_data: dict[str, Any], how: str
) -> None:
    """These aborted the process in TensorFlow (SIGABRT): now an answer."""
    out = outputdir_with(tmp_path, legacy3["dir"])
    crafted_checkpoint(out / "classifier", how)
    r = moodle("prediction", "m", out, binary_data["predict"])
    assert r.rc == 1 and r.json["status"] == 1, (r.rc, r.stderr[-2000:])
    assert "cannot be read" in r.json["info"][0]
    r = moodle("import", "m", tmp_path / "other", out / "classifier")
    assert r.rc == 1 and r.json["status"] == 1, (r.rc, r.stderr[-2000:])
