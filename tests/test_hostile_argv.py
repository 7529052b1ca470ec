"""Moodle's argv against hostile directories and files (issue 21, items
8 to 10): symbolic links out of, or inside, the directories the program
makes or copies; named pipes and devices where a file is read; messages
that named the wrong problem.

Every call runs in process (`moodle_in_process`). The calls that met a
named pipe used to block for ever: `watchdog` opens the pipe's other end
after a grace period, so that a regression fails here instead of hanging
the suite.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.hostile import bundle_entry, write_legacy3, write_table
from helpers.run import moodle_in_process, write

from mlbackend import dataset, legacy, store
from mlbackend.contract import BackendError
from mlbackend.model.format import write_npz

HEAD = 'nfeatures,targetclasses,targettype\n4,"[0,1]",discrete\n'
PREDICT = (
    HEAD + "sampleid,f1,f2,f3,f4\n" + "".join(f"s{i},{i % 2},0.5,-1,{i / 10}\n" for i in range(6))
)
TRAIN = (
    HEAD + "f1,f2,f3,f4,target\n" + "".join(f"{i % 2},0.5,-1,{i / 10},{i % 2}\n" for i in range(8))
)
#: Windows line ends in the header, then rows separated by CR alone.
CRLF_HEADER_CR_ROWS = "\r\n".join(TRAIN.split("\n")[:3]) + "\r\n" + "\r".join(TRAIN.split("\n")[3:])


def files_in(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir())


@contextlib.contextmanager
def watchdog(*fifos: Path, grace: float = 60.0) -> Iterator[list[Path]]:
    """Open the other end of each FIFO after `grace` seconds, so that a call
    blocked on one returns (and the test fails) instead of hanging; yields
    the FIFOs that had to be unblocked."""
    unblocked: list[Path] = []
    stop = threading.Event()

    def run() -> None:
        if stop.wait(grace):
            return
        for fifo in fifos:
            with contextlib.suppress(OSError):  # nobody was blocked on it
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                unblocked.append(fifo)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield unblocked
    finally:
        stop.set()
        thread.join()


def refused(r: Any, *words: str) -> str:
    assert r.rc == 1 and r.json["status"] == 1, (r.rc, r.stdout, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    info = r.json["info"][0]
    assert len(info) < 1000 and all(w in info for w in words), info
    return str(info)


@pytest.fixture
def trained(tmp_path: Path) -> dict[str, Path]:
    """An OUTPUTDIR holding our model (written directly: no training), and the datasets."""
    from helpers.models import model

    out = tmp_path / "model"
    (out / "classifier").mkdir(parents=True)
    with open(out / "classifier" / "model.npz", "wb") as f:
        write_npz(f, model(4, (3,), 0, feature_names=["f1", "f2", "f3", "f4"]))
    return {
        "out": out,
        "predict": Path(write(tmp_path / "predict.csv", PREDICT)),
        "train": Path(write(tmp_path / "train.csv", TRAIN)),
    }


# --------------------------------------------------------------------------
# 8. Links out of the directories the program makes or copies


def test_training_does_not_write_through_a_classifier_link(tmp_path, trained):
    """The issue's case: OUTPUTDIR/classifier a link elsewhere (as root,
    into /etc); model.npz and .lock were written through it."""
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    out = tmp_path / "linked"
    out.mkdir()
    (out / "classifier").symlink_to(elsewhere)
    info = refused(moodle_in_process("training", "m", out, trained["train"]), "symbolic link")
    assert "classifier" in info
    assert list(elsewhere.iterdir()) == []
    # prediction and export do not read through it either
    (elsewhere / "model.npz").write_bytes((trained["out"] / "classifier/model.npz").read_bytes())
    refused(moodle_in_process("prediction", "m", out, trained["predict"]), "symbolic link")
    refused(moodle_in_process("export", "m", out, tmp_path / "export"), "symbolic link")


def test_evaluation_does_not_write_through_a_logs_link(tmp_path, trained):
    """Another member: OUTPUTDIR/logs a link; the run's directory would be made there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = trained["out"]
    (out / "logs").symlink_to(elsewhere)
    r = moodle_in_process(
        "evaluation", "m", out, trained["train"], 0.5, 0.5, 1, out
    )  # with TRAINEDMODELDIR: scores the model, no training
    refused(r, "symbolic link", "logs")
    assert list(elsewhere.iterdir()) == []


def test_a_model_file_that_is_a_link_is_not_followed(tmp_path, trained):
    """model.npz a link to a good model elsewhere: refused, and training
    does not replace the link's target either."""
    out = tmp_path / "out"
    (out / "classifier").mkdir(parents=True)
    target = tmp_path / "good.npz"
    target.write_bytes((trained["out"] / "classifier/model.npz").read_bytes())
    (out / "classifier" / "model.npz").symlink_to(target)
    before = target.read_bytes()
    refused(moodle_in_process("prediction", "m", out, trained["predict"]), "symbolic link")
    refused(moodle_in_process("training", "m", out, trained["train"]), "symbolic link")
    assert target.read_bytes() == before


def test_import_copies_only_what_an_old_model_is_made_of(tmp_path, trained):
    """The issue's case: a valid old model beside `model.ckpt/zero -> /dev/zero`
    (6.7 GB written in 30 s). Also junk files and a link loop beside it:
    none of them is read or copied; the model is stored and predicts."""
    source = tmp_path / "import"
    write_legacy3(source)
    ckpt = source / "model.ckpt"
    (ckpt / "zero").symlink_to("/dev/zero")
    (ckpt / "loop").symlink_to(ckpt)  # copytree followed it until ELOOP: "(None)"
    (ckpt / "assets").mkdir()
    (ckpt / "assets" / "junk.bin").write_bytes(bytes(1 << 20))
    os.mkfifo(ckpt / "fifo")
    (source / "readme.txt").write_text("not a model")
    out = tmp_path / "stored"
    with watchdog(ckpt / "fifo") as unblocked:
        r = moodle_in_process("import", "m", out, source)
    assert r.rc == 0 and r.last == "Ok", (r.stdout, r.stderr[-2000:])
    assert not unblocked
    assert files_in(out / "classifier") == [
        ".lock",
        "classifier.pkl",
        "model.ckpt/saved_model.pb",
        "model.ckpt/variables/variables.data-00000-of-00001",
        "model.ckpt/variables/variables.index",
    ]
    p = moodle_in_process("prediction", "m", out, trained["predict"])
    assert p.rc == 0 and len(p.json["predictions"]) == 6, p.stdout


@pytest.mark.parametrize(
    "bend,words",
    [
        ("pickle link", "symbolic link"),
        ("variables link", "symbolic link"),
        ("metadata is /dev/zero", "symbolic link"),
        ("data file padded", "its index lists"),
        ("saved_model.pb too large", "more than any model"),
        ("classifier/ link", "symbolic link"),
    ],
)
def test_an_old_model_with_a_link_or_padding_is_refused(tmp_path, bend, words):
    """The files a model is made of: regular files, in directories of their
    own, of the size their format gives; the copy is bounded."""
    source = tmp_path / "import"
    model_dir = source / "classifier" if bend == "classifier/ link" else source
    write_legacy3(tmp_path / "real" if bend == "classifier/ link" else model_dir)
    ckpt = model_dir / "model.ckpt"
    if bend == "pickle link":
        (tmp_path / "elsewhere.pkl").write_bytes((source / "classifier.pkl").read_bytes())
        (source / "classifier.pkl").unlink()
        (source / "classifier.pkl").symlink_to(tmp_path / "elsewhere.pkl")
    elif bend == "variables link":
        (ckpt / "variables").rename(tmp_path / "variables")
        (ckpt / "variables").symlink_to(tmp_path / "variables")
    elif bend == "metadata is /dev/zero":
        (ckpt / "keras_metadata.pb").symlink_to("/dev/zero")
    elif bend == "data file padded":
        with open(ckpt / "variables" / "variables.data-00000-of-00001", "ab") as f:
            f.write(bytes(1 << 20))
    elif bend == "saved_model.pb too large":
        with open(ckpt / "saved_model.pb", "wb") as f:
            f.truncate(legacy.MAX_SAVED_MODEL_BYTES + 1)
    else:
        source.mkdir()
        (source / "classifier").symlink_to(tmp_path / "real")
    out = tmp_path / "stored"
    refused(moodle_in_process("import", "m", out, source), words)
    assert not (out / "classifier" / "classifier.pkl").exists()


def test_a_checkpoint_listing_more_than_a_model_needs_is_refused(tmp_path):
    """A data file may hold only what its index lists; an index listing
    250 MiB of tensors beside weights of a few bytes is refused unread."""
    source = tmp_path / "import"
    write_legacy3(source)
    index = source / "model.ckpt" / "variables" / "variables.index"
    from mlbackend import checkpoint

    entries = checkpoint.read_index(str(index))
    entries["junk"] = bundle_entry(7, [1], 0, 250 << 20)
    write_table(index, entries)
    with open(source / "model.ckpt/variables/variables.data-00000-of-00001", "ab") as f:
        f.truncate(250 << 20)  # sparse: no disk used
    refused(moodle_in_process("import", "m", tmp_path / "out", source), "more than a model")


# --------------------------------------------------------------------------
# 9. Named pipes and devices


def test_a_named_pipe_as_the_dataset_is_refused(tmp_path, trained):
    fifo = tmp_path / "dataset.csv"
    os.mkfifo(fifo)
    with watchdog(fifo) as unblocked:
        for module in ("training", "prediction"):
            refused(moodle_in_process(module, "m", trained["out"], fifo), "named pipe")
        refused(
            moodle_in_process("evaluation", "m", trained["out"], fifo, 0.5, 0.5, 1), "named pipe"
        )
    assert not unblocked
    # another member: a device, which never ends
    refused(moodle_in_process("prediction", "m", trained["out"], "/dev/zero"), "not a file")


@pytest.mark.parametrize("name", ["model.npz", ".lock"])
def test_a_named_pipe_in_the_model_directory_is_refused(tmp_path, trained, name):
    out = trained["out"]
    path = out / "classifier" / name
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    with watchdog(path) as unblocked:
        refused(moodle_in_process("training", "m", out, trained["train"]), "named pipe")
        if name == "model.npz":
            refused(moodle_in_process("prediction", "m", out, trained["predict"]), "named pipe")
    assert not unblocked
    assert path.is_fifo()  # left as it was, for the admin to look at


@pytest.mark.parametrize(
    "name",
    ["model.npz", "classifier.pkl", "model.ckpt/variables/variables.index", "model.json"],
)
def test_a_named_pipe_in_an_import_directory_is_refused(tmp_path, name):
    source = tmp_path / "import"
    if name in ("model.npz", "model.json"):
        source.mkdir()
    else:
        write_legacy3(source)
    path = source / name
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    with watchdog(path) as unblocked:
        info = refused(moodle_in_process("import", "m", tmp_path / "out", source), "named pipe")
    assert not unblocked
    assert os.path.basename(name) in info


# --------------------------------------------------------------------------
# 10. Messages that named the wrong problem


@pytest.mark.parametrize(
    "cell,words",
    [
        ("1e308", "too large"),  # the issue's: finite, only too large for float32
        ("-3.5e38", "too large"),
        ("1e39", "too large"),
        ("1" * 400, "too large"),  # a decimal too long even for float64
        ("inf", "not infinity or NaN"),
        ("-nan", "not infinity or NaN"),
    ],
)
def test_a_number_too_large_is_not_called_infinite(tmp_path, cell, words):
    for training in (True, False):
        text = (
            HEAD + "f1,f2,f3,f4,target\n1,0," + cell + ",0,1\n"
            if training
            else HEAD + "sampleid,f1,f2,f3,f4\ns1,1,0," + cell + ",0\n"
        )
        path = write(tmp_path / "d.csv", text)
        with pytest.raises(BackendError) as err:
            (dataset.read_training if training else dataset.read_prediction)(path)
        assert words in err.value.message and "(f3)" in err.value.message, err.value.message


@pytest.mark.parametrize(
    "text,words,line",
    [
        (TRAIN.replace("\n", "\r"), "carriage return alone", 1),  # the issue's
        (TRAIN.replace("\n", "\u2028"), "U+2028", 1),
        (CRLF_HEADER_CR_ROWS, "carriage return alone", 4),
        (HEAD + "f1,f2,f3,f4,target\n1,0,0,0,1\r0,1,0,1,0\n", "carriage return alone", 4),
        ("nfeatures\r" * (600_000), "carriage return alone", 1),  # over the 4 MiB line limit
    ],
    ids=["CR only", "U+2028", "header CRLF then CR", "CR between rows", "long CR file"],
)
def test_line_ends_are_named(tmp_path, text, words, line):
    path = write(tmp_path / "d.csv", text)
    with pytest.raises(BackendError) as err:
        dataset.read_training(path)
    message = err.value.message
    assert words in message and message.startswith(f"Line {line} "), message
    assert "ends before the data" not in message


def test_the_messages_reach_moodle(tmp_path, trained):
    r = moodle_in_process(
        "training", "m", tmp_path / "new", write(tmp_path / "cr.csv", TRAIN.replace("\n", "\r"))
    )
    refused(r, "carriage return alone")
    big = PREDICT.replace("s1,1,0.5,-1,0.1", "s1,1,0.5,1e308,0.1")
    refused(
        moodle_in_process("prediction", "m", trained["out"], write(tmp_path / "b.csv", big)),
        "too large",
    )


def test_a_model_read_through_the_store_reads_no_link(tmp_path, trained):
    """store.read, the path every action takes: the same refusals in process."""
    out = tmp_path / "out"
    (out / "classifier").mkdir(parents=True)
    (out / "classifier" / "model.npz").symlink_to(trained["out"] / "classifier" / "model.npz")
    with pytest.raises(BackendError, match="symbolic link"):
        store.read(str(out))
