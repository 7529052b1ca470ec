"""Moodle's contract: `-m moodlemlbackend.MODULE` positional arguments,
stdout's last line as JSON, the exit code as the status.

The contract itself (exit codes, nothing on stdout but the answer, the
version gate) is checked the way Moodle runs us, as a subprocess (`moodle`);
the behaviour behind each answer through the same argv in process
(`moodle_in_process`), which spares a TensorFlow start-up per call."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers.run import moodle, moodle_in_process, write

from mlbackend.contract import EVALUATION_FIGURES

HEAD = 'nfeatures,targetclasses,targettype\n3,"[0,1]","discrete"\n'


@pytest.fixture(scope="module")
def trained(trained_as_moodle):
    """A model trained once through the Moodle argv, as a process."""
    r = trained_as_moodle["result"]
    assert r.rc == 0, r.stderr
    assert r.json == {"status": 0, "info": []}
    assert r.stdout.count("\n") == 1, "stdout carries the answer only"
    return trained_as_moodle["dir"]


def test_version_is_accepted_by_moodle_and_overridable():
    r = moodle("version")
    assert r.rc == 0
    major, minor, patch = (int(x) for x in r.last.split("."))
    assert major == 3 and (minor, patch) >= (0, 5)
    assert r.stdout.strip() == r.last
    old = moodle("version", env={"MLBACKEND_REPORTED_VERSION": "2.6.5"})
    assert old.last == "2.6.5"


def test_training_writes_a_data_only_model(trained):
    files = sorted(os.listdir(trained / "classifier"))
    assert "model.npz" in files
    assert not [f for f in files if f.startswith(".tmp-")]


def test_prediction_answers_every_row_in_order_as_strings(trained, binary_data):
    r = moodle("prediction", "course1", trained, binary_data["predict"])
    assert r.rc == 0, r.stderr
    answer = r.json
    assert answer["status"] == 0 and answer["info"] == []
    preds = answer["predictions"]
    assert [p[0] for p in preds] == list(binary_data["answers"])
    for sid, label, prob in preds:
        assert isinstance(sid, str) and isinstance(label, str) and isinstance(prob, str)
        assert label in ("0", "1")
        assert 0.5 <= float(prob) <= 1.0
    correct = sum(int(p[1]) == binary_data["answers"][p[0]] for p in preds)
    assert correct / len(preds) > 0.8
    assert r.stdout.count("\n") == 1, "stdout carries the answer only"


def test_training_again_continues_from_the_stored_model(tmp_path, binary_data):
    outdir = tmp_path / "m"
    assert moodle_in_process("training", "c", outdir, binary_data["train"]).rc == 0
    first = (outdir / "classifier" / "model.npz").read_bytes()
    r = moodle_in_process("training", "c", outdir, binary_data["train"])
    assert r.rc == 0 and r.json["status"] == 0
    assert (outdir / "classifier" / "model.npz").read_bytes() != first
    import numpy as np

    with np.load(outdir / "classifier" / "model.npz", allow_pickle=False) as npz:
        history = json.loads(str(npz["meta"]))["history"]
    assert history["trainings"] == 2 and history["rows_seen"] == 1200


def test_multiclass_train_and_predict(tmp_path, multiclass_data):
    outdir = tmp_path / "m"
    assert moodle_in_process("training", "multi", outdir, multiclass_data["train"]).rc == 0
    r = moodle_in_process("prediction", "multi", outdir, multiclass_data["predict"])
    assert r.rc == 0, r.stderr
    preds = r.json["predictions"]
    assert {p[1] for p in preds} <= {"0", "1", "2"}
    assert all(float(p[2]) >= 1 / 3 for p in preds)
    assert all(p[0].startswith("123-") for p in preds)
    accuracy = sum(int(p[1]) == multiclass_data["answers"][p[0]] for p in preds) / len(preds)
    assert accuracy > 0.6


def test_three_row_file_and_all_zero_features(tmp_path):
    tiny = write(tmp_path / "t.csv", HEAD + "f1,f2,f3,target\n1,0,1,0\n0,1,1,1\n1,1,,0\n")
    r = moodle_in_process("training", "tiny", tmp_path / "m", tiny)
    assert r.json == {"status": 0, "info": []}
    zeros = write(tmp_path / "z.csv", HEAD + "f1,f2,f3,target\n" + "0,0,0,0\n0,0,0,1\n" * 5)
    r = moodle_in_process("training", "zeros", tmp_path / "z", zeros)
    assert r.json == {"status": 0, "info": []}
    pred = write(tmp_path / "p.csv", HEAD + "sampleid,f1,f2,f3\na,0,0,0\nb,0,0,0\n")
    r = moodle_in_process("prediction", "zeros", tmp_path / "z", pred)
    assert r.rc == 0 and len(r.json["predictions"]) == 2


def test_three_distinct_rows_repeated_with_three_classes(tmp_path):
    # Moodle's own PHP tests send exactly this.
    rows = "1,0,0,0\n0,1,0,1\n0,0,1,2\n" * 50
    train = write(
        tmp_path / "r.csv",
        'nfeatures,targetclasses,targettype\n3,"[0,1,2]",discrete\nf1,f2,f3,t\n' + rows,
    )
    assert moodle_in_process("training", "rep", tmp_path / "m", train).rc == 0
    pred = write(
        tmp_path / "p.csv",
        'nfeatures,targetclasses,targettype\n3,"[0,1,2]",discrete\n'
        "sampleid,f1,f2,f3\nx,1,0,0\ny,0,1,0\nz,0,0,1\n",
    )
    r = moodle_in_process("prediction", "rep", tmp_path / "m", pred)
    assert [p[1] for p in r.json["predictions"]] == ["0", "1", "2"]


def test_evaluation_answer_and_log_directory(tmp_path, binary_data):
    r = moodle_in_process("evaluation", "ev", tmp_path, binary_data["train"], 0.7, 0.05, 3)
    assert r.rc == r.json["status"]
    a = r.json
    for key in EVALUATION_FIGURES:
        assert isinstance(a[key], float), key
    assert isinstance(a["runid"], int) and isinstance(a["info"], list)
    assert a["score"] == pytest.approx(a["f1_score"])
    assert a["min_score"] == 0.7 and a["accepted_deviation"] == 0.05
    assert a["auc"] > 0.8
    logdir = Path(a["dir"])
    assert logdir == (tmp_path / "logs" / str(a["runid"])).resolve()
    assert {"info.log", "metrics.json", "roc-curve.png", "tensor"} <= set(os.listdir(logdir))
    assert (logdir / "roc-curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((logdir / "metrics.json").read_text())
    assert len(metrics["iterations"]) == 3
    assert all(len(it["confusion_matrix"]) == 2 for it in metrics["iterations"])
    events = [f for _, _, fs in os.walk(logdir / "tensor") for f in fs]
    assert any(f.startswith("events.out.tfevents") for f in events)
    assert "iteration 3" in (logdir / "info.log").read_text()


def test_evaluation_statuses_low_score_and_deviation(tmp_path, binary_data):
    r = moodle_in_process("evaluation", "ev", tmp_path, binary_data["train"], 0.99, 0.0, 2)
    assert r.json["status"] == 12 and r.rc == 12
    assert "not very good" in r.json["info"][0] and "varied too much" in r.json["info"][1]


def test_evaluation_of_a_trained_model(trained, tmp_path, binary_data):
    r = moodle_in_process(
        "evaluation", "ev", tmp_path, binary_data["train"], 0.5, 0.05, 10, trained
    )
    assert r.rc == 0, r.stderr
    assert r.json["score_deviation"] == 0.0 and r.json["score"] > 0.8
    metrics = json.loads((Path(r.json["dir"]) / "metrics.json").read_text())
    assert len(metrics["iterations"]) == 1


def test_export_and_import_predict_the_same(trained, tmp_path, binary_data):
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    r = moodle_in_process("export", "course1", trained, export_dir)
    assert r.rc == 0 and Path(r.last).is_dir()
    # Moodle zips the printed directory and unzips it elsewhere before import.
    moved = tmp_path / "unzipped"
    shutil.copytree(r.last, moved)
    r = moodle_in_process("import", "course2", tmp_path / "imported", moved)
    assert r.rc == 0 and r.last == "Ok"
    a = moodle_in_process("prediction", "course1", trained, binary_data["predict"]).json
    b = moodle_in_process(
        "prediction", "course2", tmp_path / "imported", binary_data["predict"]
    ).json
    assert a["predictions"] == b["predictions"]


def test_export_without_model_fails(tmp_path):
    r = moodle_in_process("export", "x", tmp_path / "none", tmp_path / "out")
    assert r.rc == 1 and r.json["status"] == 1


def test_import_of_garbage_keeps_the_model(trained, tmp_path, binary_data):
    before = (trained / "classifier" / "model.npz").read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.npz").write_bytes(b"PK\x03\x04 this is not a model")
    r = moodle_in_process("import", "course1", trained, bad)
    assert r.rc == 1 and "cannot be read" in r.json["info"][0]
    assert (trained / "classifier" / "model.npz").read_bytes() == before


def test_untrained_prediction_is_status_2(tmp_path, binary_data):
    r = moodle("prediction", "u", tmp_path, binary_data["predict"])
    assert r.rc == 2
    assert r.json == {"status": 2, "info": ["Provided model have not been trained yet"]}


def test_training_without_every_class_is_status_8(tmp_path):
    one = write(tmp_path / "o.csv", HEAD + "f1,f2,f3,target\n1,0,1,0\n0,1,1,0\n")
    r = moodle("training", "o", tmp_path / "m", one)
    assert r.rc == 8 and r.json["status"] == 8
    assert r.json["errors"] == "Training data needs to include samples belonging to all classes"
    assert not (tmp_path / "m" / "classifier" / "model.npz").exists()


def test_missing_arguments(tmp_path):
    for module, args in (
        ("training", ["x"]),
        ("prediction", ["x", tmp_path]),
        ("evaluation", ["x", tmp_path, "d.csv"]),
        ("export", []),
        ("import", ["x"]),
    ):
        r = moodle(module, *args)
        assert r.rc == 1, module
        assert r.json["status"] == 1 and r.json["info"][0].startswith("Missing arguments")
        assert isinstance(r.json["runid"], str)


def test_bad_number_argument_is_a_json_error(tmp_path, binary_data):
    r = moodle_in_process("evaluation", "x", tmp_path, binary_data["train"], "high", 0.05, 3)
    assert r.rc == 1 and "min-score" in r.json["info"][0]


BAD_FILES = {
    "missing file": None,
    "empty": "",
    "binary": "\x00\x01\x02garbage" * 20,
    "no metadata": "1,0,1,0\n0,1,1,1\n",
    "non numeric": HEAD + "f1,f2,f3,target\n1,abc,1,0\n0,1,1,1\n",
    "ragged": HEAD + "f1,f2,f3,target\n1,0,1,0\n0,1\n",
    "nfeatures mismatch": 'nfeatures,targetclasses\n5,"[0,1]"\nf1,f2,f3,target\n1,0,1,0\n',
    "bad targetclasses": 'nfeatures,targetclasses\n3,"[0,1"\nf1,f2,f3,target\n1,0,1,0\n',
    "label outside": HEAD + "f1,f2,f3,target\n1,0,1,7\n0,1,1,1\n",
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_training_file_answers_status_1_and_keeps_the_model(case, trained, tmp_path):
    before = (trained / "classifier" / "model.npz").read_bytes()
    text = BAD_FILES[case]
    path = tmp_path / "bad.csv"
    if text is not None:
        path.write_text(text)
    r = moodle_in_process("training", "course1", trained, path)
    assert r.rc == 1, r.stdout
    assert r.json["status"] == 1 and r.json["info"][0]
    assert "Traceback" not in r.stdout and "Traceback" not in r.stderr
    assert (trained / "classifier" / "model.npz").read_bytes() == before


def test_prediction_file_with_other_features_than_the_model(trained, tmp_path):
    path = write(tmp_path / "p.csv", HEAD + "sampleid,f1,f2,f3\ns1,1,0,1\n")
    r = moodle_in_process("prediction", "course1", trained, path)
    assert r.rc == 1
    assert "3 features but this model was trained with 20" in r.json["info"][0]


def test_bad_prediction_file_names_the_line(trained, tmp_path):
    text = (
        'nfeatures,targetclasses\n20,"[0,1]"\nsampleid,'
        + ",".join(f"f{i}" for i in range(20))
        + "\ns1,"
        + ",".join(["0"] * 20)
        + "\ns2,"
        + ",".join(["0"] * 19)
        + ",x\n"
    )
    r = moodle_in_process("prediction", "course1", trained, write(tmp_path / "p.csv", text))
    assert r.rc == 1 and r.json["info"][0].startswith("Line 5 of the dataset")
