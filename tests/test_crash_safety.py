"""No model is ever lost: a training killed at any moment, trainings and
predictions at the same time on one model, a full disk.

Everything runs as Moodle runs it (a process per call, `-m moodlemlbackend.MODULE`),
on small data so that a training call takes a few seconds, most of them
importing TensorFlow.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.run import backend_env, moodle, moodle_in_process

from mlbackend import actions, store, synthetic

NFEATURES = 8
#: Kills at random moments spread over a whole training call (one in each
#: eighth of it).
KILLS = 8
#: Extra kills aimed at the save itself: as soon as the temporary file appears.
SAVE_KILLS = 2
#: Tries at most to land those: a kill can come a moment after the save ended.
SAVE_ATTEMPTS = 12


def moodle_cmd(module: str, *args: Any) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlbackend",
        "-m",
        f"moodlemlbackend.{module}",
        *[str(a) for a in args],
    ]


def start(module: str, *args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        moodle_cmd(module, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=backend_env(),
    )


def answer_of(stdout: str) -> dict[str, Any]:
    return json.loads([line for line in stdout.split("\n") if line.strip()][-1])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A first training file, several files of new rows, a prediction file.

    Each file of new rows names its features differently (`b3-input-0`...):
    a model keeps the names of the last dataset it was trained on, so the
    stored model says which training wrote it."""
    tmp = tmp_path_factory.mktemp("crashdata")
    full = synthetic.generate(1200, NFEATURES, seed=7)

    def part(lo: int, hi: int) -> synthetic.Synthetic:
        return synthetic.Synthetic(full.X[lo:hi], full.y[lo:hi], full.classes)

    first = synthetic.write_training(str(tmp / "first.csv"), part(0, 300))
    batches = []
    for k in range(4):
        lo = 300 + k * 150
        path = tmp / f"batch{k}.csv"
        synthetic.write_training(str(path), part(lo, lo + 100 + 10 * k))
        text = path.read_text().replace("input-", f"b{k}-input-")
        path.write_text(text)
        batches.append({"path": str(path), "rows": 100 + 10 * k, "name": f"b{k}-input-0"})
    predict = str(tmp / "predict.csv")
    synthetic.write_prediction(predict, part(1000, 1040))
    return {"first": first, "batches": batches, "predict": predict}


def meta_of(model_bytes: bytes) -> dict[str, Any]:
    with np.load(io.BytesIO(model_bytes), allow_pickle=False) as npz:
        return json.loads(str(npz["meta"]))


def expected_predictions(model_bytes: bytes, predict: str, tmp: Path) -> list[list[str]]:
    """What prediction answers with this model file: computed in process from a copy."""
    copy = tmp / f"copy-{len(list(tmp.iterdir()))}"
    (copy / "classifier").mkdir(parents=True)
    (copy / "classifier" / "model.npz").write_bytes(model_bytes)
    return actions.predict(str(copy), predict)["predictions"]


def strays(outdir: Path) -> list[str]:
    return [n for n in os.listdir(outdir / "classifier") if n.startswith(store.TEMP_PREFIX)]


# ---------------------------------------------------------------------------
# kill -9


def test_a_training_killed_at_any_moment_never_loses_the_model(tmp_path, data):
    outdir = tmp_path / "model"
    model_file = outdir / "classifier" / "model.npz"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert moodle_in_process("training", "crash", outdir, data["first"]).rc == 0

    # One uninterrupted call on new rows: how long the calls to kill take.
    batch = data["batches"][0]
    began = time.monotonic()
    r = moodle("training", "crash", outdir, batch["path"])
    duration = time.monotonic() - began
    assert r.rc == 0, r.stderr
    current = model_file.read_bytes()
    trained = meta_of(current)["history"]
    assert trained["trainings"] == 2
    predictions = moodle_in_process("prediction", "crash", outdir, data["predict"]).json[
        "predictions"
    ]
    assert predictions == expected_predictions(current, data["predict"], scratch)

    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    # One moment in each twentieth of the call (and a little past its end, as
    # calls vary), in random order: every part of it (start-up, TensorFlow's
    # import, reading, training, saving, exit) gets kills.
    moments = [(i + rng.random()) / KILLS * duration * 1.1 for i in range(KILLS)]
    rng.shuffle(moments)
    outcomes = {
        "killed, old model kept": 0,
        "finished before the kill": 0,
        "killed after saving": 0,
    }
    state = {"current": current, "trained": trained, "predictions": predictions}

    def kill_once(n: int, kind: str, moment: float | None) -> bool:
        """Start a training, kill it, check the model; True when the kill came
        while the save's temporary file existed (it is left behind)."""
        batch = data["batches"][n % len(data["batches"])]
        proc = start("training", "crash", outdir, batch["path"])
        if moment is not None:
            time.sleep(moment)
        else:
            wait_for_temp_file(proc, outdir)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate()
        mid_save = not finished and strays(outdir) != []
        where = f"kill {n + 1} ({kind}, {moment}; seed {seed}, call {duration:.2f} s)"
        now = model_file.read_bytes()
        if now == state["current"]:
            outcomes["killed, old model kept"] += 1
            assert not finished or proc.returncode != 0, where
        else:
            # A new model: it must be a whole, completed training on this batch,
            # continuing from the previous model.
            history = meta_of(now)["history"]
            assert history["trainings"] == state["trained"]["trainings"] + 1, where
            assert history["rows_seen"] == state["trained"]["rows_seen"] + batch["rows"], where
            assert meta_of(now)["feature_names"][0] == batch["name"], where
            outcomes["finished before the kill" if finished else "killed after saving"] += 1
            if finished:
                assert proc.returncode == 0 and answer_of(stdout)["status"] == 0, stderr
            state.update(
                current=now,
                trained=history,
                predictions=expected_predictions(now, data["predict"], scratch),
            )
        r = moodle_in_process("prediction", "crash", outdir, data["predict"])
        assert r.rc == 0, f"{where}: {r.stdout} {r.stderr}"
        assert r.json["predictions"] == state["predictions"], where
        assert strays(outdir) == [], f"{where}: the next call left {strays(outdir)}"
        return mid_save

    for n, moment in enumerate(moments):
        kill_once(n, "random", moment)
    # Kills aimed at the save: as soon as its temporary file appears. A kill
    # can still come a moment late (the save is quick), so aim again until
    # SAVE_KILLS of them are seen to have cut a save short.
    hit_save = attempts = 0
    while hit_save < SAVE_KILLS and attempts < SAVE_ATTEMPTS:
        hit_save += kill_once(KILLS + attempts, "save", None)
        attempts += 1
    print(
        f"\n{KILLS + attempts} kills over a {duration:.2f} s call (seed {seed}): "
        f"{outcomes}; {hit_save} of {attempts} aimed kills cut a save short"
    )
    assert hit_save == SAVE_KILLS, f"only {hit_save} of {attempts} aimed kills hit the save"
    assert outcomes["killed, old model kept"] > 0  # the kills did interrupt trainings
    # And the model still trains on.
    assert moodle_in_process("training", "crash", outdir, data["batches"][0]["path"]).rc == 0


def wait_for_temp_file(proc: subprocess.Popen[str], outdir: Path) -> bool:
    """Poll until the training's temporary model file appears (the save has
    begun) or the process ends; True if the file was seen."""
    classifier = outdir / "classifier"
    while proc.poll() is None:
        try:
            if any(n.startswith(store.TEMP_PREFIX) for n in os.listdir(classifier)):
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.0002)
    return False


def test_a_reader_cleans_up_after_a_killed_writer(tmp_path, data, run_main):
    outdir = tmp_path / "model"
    assert run_main("training", data["first"], "--model-dir", outdir).rc == 0
    (outdir / "classifier" / ".tmp-killed.npz").write_bytes(b"half a model")
    (outdir / "classifier" / ".tmp-killed-dir").mkdir()
    r = moodle("prediction", "tidy", outdir, data["predict"])
    assert r.rc == 0
    assert strays(outdir) == []


def test_a_reader_leaves_the_temporary_files_of_a_writer_at_work(tmp_path, data, run_main):
    outdir = tmp_path / "model"
    assert run_main("training", data["first"], "--model-dir", outdir).rc == 0
    with store.writer_lock(str(outdir)):
        (outdir / "classifier" / ".tmp-in-progress.npz").write_bytes(b"being written")
        r = moodle("prediction", "busy", outdir, data["predict"])
        assert r.rc == 0
        assert strays(outdir) == [".tmp-in-progress.npz"]
        store.tidy(str(outdir))  # same process, another open: still refused
        assert strays(outdir) == [".tmp-in-progress.npz"]
    r = moodle("prediction", "busy", outdir, data["predict"])
    assert strays(outdir) == []


# ---------------------------------------------------------------------------
# At the same time


def test_trainings_and_predictions_at_once(tmp_path, data):
    """3 trainings and 6 predictions of one model at the same time, each its
    own process: each training continues from the one before (none is lost),
    and each prediction reads a whole model, one of those the trainings wrote."""
    outdir = tmp_path / "model"
    model_file = outdir / "classifier" / "model.npz"
    assert moodle_in_process("training", "busy", outdir, data["first"]).rc == 0
    batches = data["batches"][:3]

    versions = [model_file.read_bytes()]
    stop = threading.Event()

    def record_versions() -> None:
        # Every model the trainings save lives at least as long as the next
        # training's fit: polling sees each one.
        seen = os.stat(model_file).st_ino
        while not stop.is_set():
            try:
                with open(model_file, "rb") as f:
                    if os.fstat(f.fileno()).st_ino != seen:
                        seen = os.fstat(f.fileno()).st_ino
                        versions.append(f.read())
            except FileNotFoundError:
                pass
            time.sleep(0.005)

    watcher = threading.Thread(target=record_versions)
    watcher.start()
    try:
        trainings = [start("training", "busy", outdir, b["path"]) for b in batches]
        predictions = []
        for _ in range(6):  # spread over the trainings, which queue on the lock
            predictions.append(start("prediction", "busy", outdir, data["predict"]))
            # The next one once a training has saved (or a few seconds on).
            seen, until = len(versions), time.monotonic() + 5
            while len(versions) == seen and time.monotonic() < until:
                if all(p.poll() is not None for p in trainings):
                    break
                time.sleep(0.05)
        results = [(p, *p.communicate()) for p in trainings + predictions]
    finally:
        stop.set()
        watcher.join()
    for proc, stdout, stderr in results:
        assert proc.returncode == 0, stderr
        assert answer_of(stdout)["status"] == 0

    # The trainings ran one after the other, each from the previous model.
    assert len(versions) == 1 + len(trainings)
    metas = [meta_of(v) for v in versions]
    assert [m["history"]["trainings"] for m in metas] == [1, 2, 3, 4]
    written_by = [m["feature_names"][0] for m in metas[1:]]
    assert sorted(written_by) == sorted(b["name"] for b in batches)
    rows = sum(b["rows"] for b in batches)
    assert metas[-1]["history"]["rows_seen"] == metas[0]["history"]["rows_seen"] + rows
    # The final model is the last training's, whole.
    assert model_file.read_bytes() == versions[-1]
    assert strays(outdir) == []
    # Every prediction is that of one of the saved models.
    possible = [expected_predictions(v, data["predict"], tmp_path) for v in versions]
    for _proc, stdout, _ in results[len(trainings) :]:
        assert answer_of(stdout)["predictions"] in possible


def test_two_evaluations_at_once_get_their_own_runs(tmp_path, data):
    """Two evaluations of one model directory at once (two cron runs, or two
    requests of a server): each its own run id and log directory."""
    import concurrent.futures

    def evaluate(_: int) -> dict[str, Any]:
        return actions.evaluate(str(tmp_path), data["first"], 0.5, 0.5, 2)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(evaluate, range(2)))
    for answer in answers:
        assert answer["status"] in (0, 4, 8, 12), answer
    assert answers[0]["runid"] != answers[1]["runid"]
    assert answers[0]["dir"] != answers[1]["dir"]
    for answer in answers:
        logdir = Path(answer["dir"])
        assert logdir.parent == (tmp_path / "logs").resolve()
        assert json.loads((logdir / "metrics.json").read_text())["runid"] == answer["runid"]
        assert {"info.log", "roc-curve.png", "tensor"} <= set(os.listdir(logdir))


# ---------------------------------------------------------------------------
# A full disk


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 8 MiB filesystem (tmpfs) at a directory; needs root."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip(
            "mounting a small tmpfs needs root; the simulated full disk "
            "(test_a_save_failing_with_enospc_*) still runs"
        )
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({p.stderr.strip() or p.returncode}); the "
            "simulated full disk (test_a_save_failing_with_enospc_*) still runs"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; returns it."""
    filler = directory / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_keeps_the_previous_model(small_disk, data):
    """A real full filesystem (the process boundary is not the point here:
    the calls run in process)."""
    outdir = small_disk / "model"
    assert moodle_in_process("training", "full", outdir, data["first"]).rc == 0
    model_file = outdir / "classifier" / "model.npz"
    before = model_file.read_bytes()
    predictions = moodle_in_process("prediction", "full", outdir, data["predict"]).json[
        "predictions"
    ]

    filler = fill(small_disk)
    r = moodle_in_process("training", "full", outdir, data["batches"][0]["path"])
    assert r.rc == 1 and r.json["status"] == 1, r.stdout
    assert "disk is full" in r.json["info"][0]
    assert "previous model is unchanged" in r.json["info"][0]
    assert "Traceback" not in r.stderr
    assert model_file.read_bytes() == before
    assert strays(outdir) == []
    r = moodle_in_process("prediction", "full", outdir, data["predict"])
    assert r.rc == 0 and r.json["predictions"] == predictions
    # An evaluation cannot write its logs: it says so.
    r = moodle_in_process("evaluation", "full", outdir, data["first"], 0.5, 0.5, 1)
    assert r.rc == 1 and "could not write its logs" in r.json["info"][0], r.stdout
    assert "disk is full" in r.json["info"][0] and "Traceback" not in r.stderr

    # An export to the full disk says so, and leaves no temporary file behind.
    exported = small_disk / "export"
    r = moodle_in_process("export", "full", outdir, exported)
    assert r.rc == 1 and "could not be exported" in r.last and "disk is full" in r.last, r.stdout
    assert "Traceback" not in r.stderr
    assert not exported.exists() or os.listdir(exported) == []

    filler.unlink()  # room again: training goes on from the same model
    assert moodle_in_process("training", "full", outdir, data["batches"][0]["path"]).rc == 0
    assert meta_of(model_file.read_bytes())["history"]["trainings"] == 2


@pytest.mark.parametrize("failing", ["write", "fsync", "rename"])
def test_a_save_failing_with_enospc_keeps_the_previous_model(
    tmp_path, data, monkeypatch, failing, run_main
):
    """The same in process, with the failure at each step of the save."""
    outdir = tmp_path / "model"
    assert run_main("training", data["first"], "--model-dir", outdir).rc == 0
    before = (outdir / "classifier" / "model.npz").read_bytes()
    predictions = run_main("prediction", data["predict"], "--model-dir", outdir).json

    def no_space(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = {"write": (np, "savez"), "fsync": (os, "fsync"), "rename": (os, "replace")}
    monkeypatch.setattr(*target[failing], no_space)
    r = run_main("training", data["batches"][0]["path"], "--model-dir", outdir)
    monkeypatch.undo()
    assert r.rc == 1
    assert "disk is full" in r.json["info"][0]
    assert (outdir / "classifier" / "model.npz").read_bytes() == before
    assert strays(outdir) == []
    assert run_main("prediction", data["predict"], "--model-dir", outdir).json == predictions


def test_a_model_that_would_not_load_is_never_saved(tmp_path, data, run_main):
    """A training gone wrong (weights that are not numbers) must not replace
    the model: it would answer nothing but errors from then on."""
    outdir = tmp_path / "model"
    assert run_main("training", data["first"], "--model-dir", outdir).rc == 0
    before = (outdir / "classifier" / "model.npz").read_bytes()
    from helpers.models import scaled

    broken = scaled(store.read(str(outdir)).model, np.nan)
    with store.writer_lock(str(outdir)):
        with pytest.raises(store.BackendError, match="not saved.*previous model is unchanged"):
            store.save(str(outdir), broken)
    assert (outdir / "classifier" / "model.npz").read_bytes() == before
    assert strays(outdir) == []
    assert run_main("prediction", data["predict"], "--model-dir", outdir).rc == 0


# ---------------------------------------------------------------------------
# Hostile or damaged model directories (issue 12)


def test_training_replaces_a_damaged_model_and_keeps_it_aside(tmp_path, data):
    """The message said "Train the model again" but training read the old
    model first and failed the same way: now training makes a new one."""
    outdir = tmp_path / "model"
    (outdir / "classifier").mkdir(parents=True)
    damaged = b"PK\x03\x04 not a model any more"
    (outdir / "classifier" / "model.npz").write_bytes(damaged)
    r = moodle_in_process("prediction", "damaged", outdir, data["predict"])
    assert r.rc == 1 and "training replaces a model that cannot be read" in r.json["info"][0]
    r = moodle_in_process("training", "damaged", outdir, data["first"])
    assert r.rc == 0, r.stdout + r.stderr[-2000:]
    kept = [p for p in (outdir / "classifier").iterdir() if ".damaged-" in p.name]
    assert len(kept) == 1 and kept[0].read_bytes() == damaged
    assert moodle_in_process("prediction", "damaged", outdir, data["predict"]).rc == 0


@pytest.mark.parametrize(
    "meta,words",
    [
        ([1, 2], "metadata is a list"),
        ({"feature_names": 5}, "feature_names must be a list"),
        ({"history": [1, 2]}, "history must be an object"),
        ({"classes": [0, "x"]}, "classes must be"),
        ({"nfeatures": "\u0663"}, "nfeatures must be"),
    ],
)
def test_a_model_with_odd_metadata_is_a_clean_error(tmp_path, data, run_main, meta, words):
    outdir = tmp_path / "model"
    assert run_main("training", data["first"], "--model-dir", outdir).rc == 0
    path = outdir / "classifier" / "model.npz"
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    doc = json.loads(str(arrays["meta"]))
    doc = meta if isinstance(meta, list) else {**doc, **meta}
    arrays["meta"] = np.array(json.dumps(doc))
    np.savez(path, **arrays)
    r = run_main("prediction", data["predict"], "--model-dir", outdir)
    assert r.rc == 1 and words in r.json["info"][0] and "Unexpected" not in r.stdout


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_model_files_and_exports_respect_the_umask(tmp_path, data, run_main, umask):
    """mkstemp made every model 0600: cron and the web server, different
    users, could not share models. Now the umask decides."""
    old = os.umask(umask)
    try:
        outdir = tmp_path / "model"
        assert run_main("training", data["first"], "--model-dir", outdir).rc == 0
        assert run_main("export", tmp_path / "export", "--model-dir", outdir).rc == 0
    finally:
        os.umask(old)
    for path in (outdir / "classifier" / "model.npz", tmp_path / "export" / "model.npz"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, oct(path.stat().st_mode)


def test_a_lock_file_that_is_a_symbolic_link_is_not_followed(tmp_path, data, run_main):
    outdir = tmp_path / "model"
    (outdir / "classifier").mkdir(parents=True)
    target = tmp_path / "elsewhere"
    (outdir / "classifier" / ".lock").symlink_to(target)
    r = run_main("training", data["first"], "--model-dir", outdir)
    assert r.rc == 1 and "symbolic link" in r.json["info"][0]
    assert not target.exists() and not (outdir / "classifier" / "model.npz").exists()


def test_a_wide_model_is_refused_by_the_work_it_causes(tmp_path):
    """2 KB zipped, 16 million hidden units: ~125 MB per predicted row. The
    file is small, the network is not: refused when read."""
    from helpers.hostile import small_model_arrays

    arrays = small_model_arrays(nfeatures=1, hidden=1)
    width = 16_000_000
    arrays["layer0_kernel"] = np.zeros((1, width), np.float32)
    arrays["layer0_bias"] = np.zeros(width, np.float32)
    arrays["layer1_kernel"] = np.zeros((width, 2), np.float32)
    meta = json.loads(str(arrays["meta"]))
    meta["hidden_units"] = [width]
    arrays["meta"] = np.array(json.dumps(meta))
    path = tmp_path / "model.npz"
    np.savez_compressed(path, **arrays)
    with pytest.raises(store.BackendError, match="more than a model can take|units") as err:
        store.read_file(str(path))
    assert err.value.status == 1


def test_prediction_in_row_blocks_gives_the_same_answers(monkeypatch):
    from helpers.hostile import small_model_arrays

    from mlbackend.model import limits
    from mlbackend.model.format import from_arrays

    model = from_arrays(small_model_arrays(nfeatures=5, hidden=7), "m")
    X = np.random.default_rng(1).normal(size=(1000, 5)).astype(np.float32)
    X[::97] = 3e38  # rows that overflow float32 go through the float64 path
    whole = model.predict_proba(X)
    monkeypatch.setattr(limits, "PREDICT_BLOCK_BYTES", 1)  # one row at a time
    assert model.block_rows == 1
    # float32 products summed in another order differ in the last bits only
    np.testing.assert_allclose(model.predict_proba(X), whole, atol=1e-6)


def test_an_evaluation_log_holds_its_own_run_only(tmp_path, data, run_main):
    """A server runs other requests while an evaluation writes its info.log;
    their lines (other models' ids) went into it. Now only the run's own."""
    import logging

    outdir = tmp_path / "model"
    assert run_main("training", data["first"], "--model-dir", outdir).rc == 0
    stop = threading.Event()
    other = logging.getLogger("mlbackend.server.app")

    def another_request() -> None:
        while not stop.is_set():
            other.info("OTHER REQUEST of model other-model-id")
            time.sleep(0.001)

    thread = threading.Thread(target=another_request)
    thread.start()
    try:
        result = actions.evaluate(
            str(tmp_path / "eval"), data["first"], 0.5, 0.5, 1, trained_model_dir=str(outdir)
        )
    finally:
        stop.set()
        thread.join()
    text = (Path(result["dir"]) / "info.log").read_text()
    assert f"evaluation {result['runid']}" in text and "result:" in text
    assert "OTHER REQUEST" not in text


def test_evaluation_trains_its_iterations_in_bounded_groups(tmp_path, data, monkeypatch):
    """Memory must not grow with niterations: networks train in groups of
    SIDE_BY_SIDE (2 here), each iteration still gets its own split and logs."""
    from mlbackend import evaluation, training

    widths = []
    real = training.train_splits

    def counting(X, y, classes, names, splits, options):
        widths.append(len(splits))
        return real(X, y, classes, names, splits, options)

    monkeypatch.setattr(evaluation, "SIDE_BY_SIDE", 2)
    monkeypatch.setattr(training, "train_splits", counting)
    result = actions.evaluate(str(tmp_path / "eval"), data["first"], 0.5, 0.5, 5)
    assert result["status"] in (0, 4, 8) and widths == [2, 2, 1]
    doc = json.loads((Path(result["dir"]) / "metrics.json").read_text())
    assert [it["iteration"] for it in doc["iterations"]] == [1, 2, 3, 4, 5]
    assert len({it["test_rows"] for it in doc["iterations"]}) == 1
    assert sorted(p.name for p in (Path(result["dir"]) / "tensor").iterdir()) == ["evaluation"] + [
        f"iteration-{i}" for i in range(1, 6)
    ]
