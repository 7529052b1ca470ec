"""The dataset reader: Moodle's real shapes parse, every malformed file is
refused with a message that names the line."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers.run import write

from mlbackend import dataset
from mlbackend.contract import BackendError

HEAD = 'nfeatures,targetclasses,targettype\n3,"[0,1]",discrete\n'


@pytest.mark.parametrize("tensorflow", [False, True], ids=["numpy", "tensorflow"])
def test_metadata_in_any_order_missing_cells_and_crlf(tmp_path, tensorflow):
    path = write(
        tmp_path / "a.csv",
        "targettype,timesplitting,targetclasses,nfeatures,somethingnew\r\n"
        'discrete,"\\a\\b","[0,1]",3,x\r\n'
        "f1,f2,f3,target\r\n"
        "1,,0.5,1\r\n"
        "\r\n"
        ",-1,,0\r\n",
    )
    ds = dataset.read_training(path, tensorflow=tensorflow)
    assert ds.nfeatures == 3 and ds.classes == [0, 1]
    assert ds.feature_names == ["f1", "f2", "f3"]
    np.testing.assert_array_equal(ds.X, [[1, 0, 0.5], [0, -1, 0]])
    assert ds.y.tolist() == [1, 0]
    assert ds.X.dtype == np.float32


def test_prediction_ids_are_strings_with_or_without_sampleid_header(tmp_path):
    for header in ("sampleid,f1,f2,f3", "f1,f2,f3"):
        path = write(tmp_path / "p.csv", HEAD + header + "\n123-4,1,0,1\n007,0,,1\n")
        ds = dataset.read_prediction(path)
        assert ds.sample_ids == ["123-4", "007"]
        assert ds.y is None
        np.testing.assert_array_equal(ds.X, [[1, 0, 1], [0, 0, 1]])


def test_bom_and_quoted_cells(tmp_path):
    path = tmp_path / "q.csv"
    path.write_bytes(
        b"\xef\xbb\xbf" + (HEAD + 'f1,f2,f3,target\n"1",0,"0.25",1\n0,1,1,0\n').encode()
    )
    ds = dataset.read_training(str(path))
    np.testing.assert_array_equal(ds.X, [[1, 0, 0.25], [0, 1, 1]])


def test_multiclass_labels(tmp_path):
    path = write(
        tmp_path / "m.csv", 'nfeatures,targetclasses\n2,"[0,1,2]"\nf1,f2,t\n1,0,2\n0,1,1\n0,0,0\n'
    )
    ds = dataset.read_training(path)
    assert ds.classes == [0, 1, 2] and ds.y.tolist() == [2, 1, 0]


def test_large_file_spans_many_blocks_and_both_decoders_agree(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset, "BLOCK_BYTES", 64)
    monkeypatch.setattr(dataset, "TF_MIN_BYTES", 0)  # TensorFlow's decoder on a small file
    rows = "".join(f"{i % 2},{i},,{i % 2}\n" for i in range(500))
    path = write(tmp_path / "big.csv", HEAD + "f1,f2,f3,t\n" + rows)
    ds = dataset.read_training(path)
    assert ds.nrows == 500
    assert ds.X[499].tolist() == [1, 499, 0]
    fast = dataset.read_training(path, tensorflow=True)
    np.testing.assert_array_equal(fast.X, ds.X)
    np.testing.assert_array_equal(fast.y, ds.y)


def test_the_decoder_is_chosen_by_the_files_size_for_every_block(tmp_path, monkeypatch):
    """TensorFlow's decoder for a large file, in all of its blocks; NumPy's
    for a small one (TF_MIN_BYTES)."""
    monkeypatch.setattr(dataset, "BLOCK_BYTES", 64)
    rows = "".join(f"{i % 2},{i},,{i % 2}\n" for i in range(500))
    path = write(tmp_path / "big.csv", HEAD + "f1,f2,f3,t\n" + rows)
    used: list[str] = []
    for name in ("_tf_numbers", "_numpy_numbers"):
        real = getattr(dataset, name)
        monkeypatch.setattr(
            dataset,
            name,
            lambda lines, n, real=real, name=name: used.append(name) or real(lines, n),
        )
    for limit, decoder in ((os.path.getsize(path), "_tf_numbers"), (1 << 40, "_numpy_numbers")):
        monkeypatch.setattr(dataset, "TF_MIN_BYTES", limit)
        used.clear()
        assert dataset.read_training(path, tensorflow=True).nrows == 500
        assert len(used) > 10 and set(used) == {decoder}


@pytest.mark.parametrize(
    "name,text,line,words",
    [
        ("empty", "", None, "is empty"),
        ("no metadata", "1,0,1,0\n0,1,1,1\n1,1,1,1\n", 1, "metadata"),
        ("short header", HEAD, 3, "ends before"),
        ("no rows", HEAD + "f1,f2,f3,t\n", None, "no data rows"),
        ("non numeric", HEAD + "f1,f2,f3,t\n1,0,1,0\n1,abc,1,0\n", 5, "column 2 (f2) holds 'abc'"),
        ("ragged", HEAD + "f1,f2,f3,t\n1,0,1,0\n0,1\n", 5, "has 2 cells"),
        ("too many cells", HEAD + "f1,f2,f3,t\n1,0,1,0,1,1\n", 4, "has 6 cells"),
        (
            "nfeatures mismatch",
            'nfeatures,targetclasses\n5,"[0,1]"\nf1,f2,f3,t\n1,0,1,0\n',
            3,
            "nfeatures is 5",
        ),
        (
            "nfeatures not a number",
            'nfeatures,targetclasses\nx,"[0,1]"\nf1,t\n1,0\n',
            2,
            "whole number",
        ),
        (
            "bad targetclasses",
            'nfeatures,targetclasses\n3,"[0,1"\nf1,f2,f3,t\n1,0,1,0\n',
            2,
            "JSON list",
        ),
        ("one class", 'nfeatures,targetclasses\n3,"[1]"\nf1,f2,f3,t\n1,0,1,1\n', 2, "at least two"),
        ("label outside", HEAD + "f1,f2,f3,t\n1,0,1,7\n", 4, "label 7"),
        ("fractional label", HEAD + "f1,f2,f3,t\n1,0,1,0.5\n", 4, "label 0.5"),
        ("nan cell", HEAD + "f1,f2,f3,t\n1,nan,1,0\n", 4, "finite"),
        ("huge cell", HEAD + "f1,f2,f3,t\n1,1e308,1,0\n", 4, "too large"),
        (
            "regression",
            'nfeatures,targetclasses,targettype\n3,"[0,1]",linear\nf1,f2,f3,t\n',
            2,
            "not supported",
        ),
        (
            "metadata values missing",
            'nfeatures,targetclasses,targettype\n3,"[0,1]"\nf1,f2,f3,t\n',
            2,
            "3 fields",
        ),
        (
            "whitespace-only cell",
            HEAD + "f1,f2,f3,t\n1,0,1,0\n1, ,1,0\n",
            5,
            "column 2 (f2) holds ' '",
        ),
        ("tab-only cell", HEAD + "f1,f2,f3,t\n1,0,\t,0\n", 4, "column 3 (f3) holds '\\t'"),
        (
            "nfeatures in Arabic-Indic digits",
            'nfeatures,targetclasses\n\u0663,"[0,1]"\nf1,f2,f3,t\n1,0,1,0\n',
            2,
            "whole number",
        ),
        (
            "nfeatures of 5,000 digits",
            "nfeatures,targetclasses\n" + "9" * 5000 + ',"[0,1]"\nf,t\n1,0\n',
            2,
            "at most 10000 features",
        ),
    ],
)
@pytest.mark.parametrize("tensorflow", [False, True], ids=["numpy", "tensorflow"])
def test_malformed_training_files(tmp_path, name, text, line, words, tensorflow):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(BackendError) as err:
        dataset.read_training(path, tensorflow=tensorflow)
    assert err.value.status == 1
    assert words in err.value.message
    if line is not None:
        assert err.value.message.startswith(f"Line {line} of the dataset")


def test_binary_and_non_utf8(tmp_path):
    garbage = tmp_path / "g.csv"
    garbage.write_bytes(b"\x00\x01\x02garbage\xff" * 50)
    with pytest.raises(BackendError, match="binary data"):
        dataset.read_training(str(garbage))
    latin = tmp_path / "l.csv"
    latin.write_bytes((HEAD + "f1,f2,f3,t\n").encode() + b"1,0,1,0\n" + b"caf\xe9,1,1,0\n")
    with pytest.raises(BackendError, match="Line 5 .*UTF-8"):
        dataset.read_training(str(latin))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        dataset.read_training(str(tmp_path / "nope.csv"))
    with pytest.raises(BackendError, match="is a directory"):
        dataset.read_training(str(tmp_path))


def test_prediction_row_without_id(tmp_path):
    path = write(tmp_path / "p.csv", HEAD + "sampleid,f1,f2,f3\n,1,0,1\n")
    with pytest.raises(BackendError, match="Line 4 .*sample id"):
        dataset.read_prediction(path)


def test_a_file_that_is_not_a_dataset_is_not_echoed(tmp_path, run_main):
    """Run as root on /etc/shadow, the first line was in the answer."""
    secret = "root:$6$saltsalt$hashhashhash:19000:0:99999:7:::"
    path = write(tmp_path / "shadow", secret + "\ndaemon:*:19000:0:99999:7:::\n" * 3)
    for module in ("training", "evaluation"):
        r = run_main(module, path, "--model-dir", tmp_path / "m")
        assert r.rc == 1 and "Is this a Moodle analytics dataset?" in r.json["info"][0]
        assert "root" not in r.stdout and "hash" not in r.stdout and "hash" not in r.stderr
