"""Deleting a model takes turns with its writers (issue 13), on one machine.

The old server deleted the directory, lock file included, while a training
held the lock: the training then saved the model again after "Ok", and a
later training locked a new lock file and ran at the same time as the first.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.inprocess import App
from helpers.servers import dirhash

from mlbackend import store
from mlbackend.server.local import LocalStorage

pytestmark = pytest.mark.usefixtures("small_training")


def test_delete_waits_for_the_writer_and_removes_what_it_saved(tmp_path: Path) -> None:
    model_dir = str(tmp_path / "m")
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store.writer_lock(model_dir):
            holding.set()
            release.wait()
            Path(store.model_path(model_dir)).write_bytes(b"saved by the writer")

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        wrote = pool.submit(writer)
        try:
            holding.wait()
            deleted = pool.submit(store.delete_model, model_dir)
            # The delete cannot finish while the writer holds the lock.
            with pytest.raises(concurrent.futures.TimeoutError):
                deleted.result(timeout=0.5)
        finally:
            release.set()  # never leave the writer waiting: the test fails, not hangs
        wrote.result()
        assert deleted.result() is True
    assert not os.path.exists(model_dir)  # what the writer saved went too


def test_a_writer_waiting_on_a_deleted_lock_file_does_not_run_beside_a_new_one(
    tmp_path: Path,
) -> None:
    """Writers waiting on the lock file the delete removed must lock the new
    file, not run beside whoever locked it."""
    model_dir = str(tmp_path / "m")
    inside: list[str] = []
    overlaps: list[tuple[str, ...]] = []
    guard = threading.Lock()
    second_holds = threading.Event()
    release_second = threading.Event()

    def enter(name: str) -> None:
        with guard:
            if inside:
                overlaps.append((*inside, name))
            inside.append(name)

    def leave(name: str) -> None:
        with guard:
            inside.remove(name)

    def waiter() -> None:  # blocks on the old lock file
        with store.writer_lock(model_dir):
            enter("waiter")
            leave("waiter")

    def second() -> None:  # locks the file made after the delete
        with store.writer_lock(model_dir):
            enter("second")
            second_holds.set()
            release_second.wait()
            leave("second")

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        try:
            with store.writer_lock(model_dir):
                waiting = pool.submit(waiter)
                time.sleep(0.3)  # give it time to block on this lock file (not an assertion)
                store.delete_model(model_dir)  # re-entrant: this thread holds the lock
                newcomer = pool.submit(second)
                second_holds.wait(timeout=60)
            # The first writer is gone; the waiter wakes on a removed file.
            with pytest.raises(concurrent.futures.TimeoutError):
                waiting.result(timeout=0.5)  # it waits for the second writer instead
        finally:
            release_second.set()  # never leave a thread waiting: the test fails, not hangs
        newcomer.result()
        waiting.result()
    assert overlaps == []


# --------------------------------------------------------------------------
# The same through the server's routes (in process, a local directory)


def test_deletemodel_during_a_training_waits_for_it_and_the_model_stays_deleted(
    binary_data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlbackend import training

    app = App(LocalStorage(str(tmp_path / "models")))
    uid, h = "deleted-local", dirhash("/moodledata/models/deleted-local/v1")
    assert app.train(uid, h, binary_data["train"])["status"] == 0
    holding, release = threading.Event(), threading.Event()
    train = training.train

    def held(*args: Any, **kwargs: Any) -> Any:  # inside the writer lock
        holding.set()
        assert release.wait(600), "the test never let the training go on"
        return train(*args, **kwargs)

    monkeypatch.setattr(training, "train", held)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        try:
            trained = pool.submit(app.train, uid, h, binary_data["train"])
            assert holding.wait(600)
            deleted = pool.submit(app.post, "deletemodel", {"uniqueid": uid})
            # The delete cannot finish while the training holds the lock.
            with pytest.raises(concurrent.futures.TimeoutError):
                deleted.result(timeout=0.5)
        finally:
            release.set()  # never leave the training waiting: the test fails, not hangs
        assert trained.result()["status"] == 0
        r = deleted.result()
        assert (r.status_code, r.text) == (200, "Ok")
    monkeypatch.undo()

    # The training finished before the delete went ahead: nothing came back.
    assert not (tmp_path / "models" / uid).exists()
    assert app.predict(uid, h, binary_data["predict"])["status"] == 2
    # and the model can be trained anew
    assert app.train(uid, h, binary_data["train"])["status"] == 0
    assert app.predict(uid, h, binary_data["predict"])["status"] == 0
