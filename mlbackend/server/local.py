"""Models in a directory of this machine: the server's default storage."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Iterator

from mlbackend.server import uploads
from mlbackend import store
from mlbackend.server.storage import Storage, StorageError

log = logging.getLogger(__name__)


class LocalStorage(Storage):
    """Models in a directory of this machine: `BASEDIR/UNIQUEID/DIRHASH/`."""

    def __init__(self, base_dir: str) -> None:
        self.base_dir = os.path.abspath(base_dir)

    def describe(self) -> str:
        return f"directory {self.base_dir}"

    def check(self) -> None:
        os.makedirs(self.base_dir, exist_ok=True)
        if not os.access(self.base_dir, os.W_OK | os.X_OK):
            raise StorageError(f"The storage directory {self.base_dir} is not writable.")

    @contextlib.contextmanager
    def model(self, uniqueid: str, dirhash: str, *, fetch: bool = True,
              push: bool = False) -> Iterator[str]:
        yield self._dir(uniqueid, dirhash)

    def run_logs_zip(self, uniqueid: str, dirhash: str, runid: str) -> bytes:
        return uploads.zip_directory(store.run_log_dir(self._dir(uniqueid, dirhash), runid))

    def delete(self, uniqueid: str) -> None:
        path = os.path.join(self.base_dir, uniqueid)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            log.info("deleted %s", path)

    def _dir(self, uniqueid: str, dirhash: str) -> str:
        return os.path.join(self.base_dir, uniqueid, dirhash)
