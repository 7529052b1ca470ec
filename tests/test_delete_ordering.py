"""Deleting a model takes turns with its writers (issue 13), on one machine.

The old server deleted the directory, lock file included, while a training
held the lock: the training then saved the model again after "Ok", and a
later training locked a new lock file and ran at the same time as the first.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.servers import PASSWORD, USER, Server, dirhash, start_server, stop

from mlbackend import store, synthetic


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
# The same through a local server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("delete-server")
    srv = start_server(
        tmp,
        {
            "MOODLE_MLBACKEND_PYTHON_USERS": f"{USER}:{PASSWORD}",
            "MOODLE_MLBACKEND_PYTHON_DIR": str(tmp / "models"),
        },
    )
    yield srv
    stop(srv.proc)


def held_by_someone(lock_file: Path) -> bool:
    """Whether a process holds the model's writer lock (flock is per open file)."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_deletemodel_during_a_training_waits_for_it_and_the_model_stays_deleted(
    server: Server, binary_data: dict[str, Any], tmp_path: Path
) -> None:
    assert server.storage is not None
    uid, h = "deleted-local", dirhash("/moodledata/models/deleted-local/v1")
    big = synthetic.write_training(
        str(tmp_path / "long.csv"), synthetic.generate(8000, 20, seed=11)
    )
    server.train(uid, h, binary_data["train"])
    lock_file = server.storage / uid / h / store.CLASSIFIER_DIR / store.LOCK_FILE

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        training = pool.submit(server.train, uid, h, big)
        deadline = time.monotonic() + 600  # a bound against hanging, not a measurement
        while not held_by_someone(lock_file):
            assert not training.done(), training.result()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = server.post("deletemodel", {"uniqueid": uid})  # the training holds the lock
        assert (r.status_code, r.text) == (200, "Ok")
        assert training.result()["status"] == 0

    # The training finished before the delete went ahead: nothing came back.
    assert not (server.storage / uid).exists()
    assert server.predict(uid, h, binary_data["predict"])["status"] == 2
    # and the model can be trained anew
    assert server.train(uid, h, binary_data["train"])["status"] == 0
    assert server.predict(uid, h, binary_data["predict"])["status"] == 0
