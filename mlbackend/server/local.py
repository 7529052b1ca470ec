"""Models in a directory of this machine: the server's default storage."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator

from mlbackend import store
from mlbackend.contract import ConfigError
from mlbackend.server import uploads
from mlbackend.server.storage import Storage, StorageError, T

log = logging.getLogger(__name__)


class LocalStorage(Storage):
    """Models in a directory of this machine: `BASEDIR/UNIQUEID/DIRHASH/`."""

    def __init__(self, base_dir: str) -> None:
        self.base_dir = os.path.abspath(base_dir)

    def describe(self) -> str:
        return f"directory {self.base_dir}"

    def private_paths(self) -> list[str]:
        return [self.base_dir]

    def check(self) -> None:
        # At start-up: a directory the server cannot use is a configuration error.
        try:
            os.makedirs(self.base_dir, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"The storage directory {self.base_dir} cannot be made ({exc.strerror})."
            ) from None
        if not os.access(self.base_dir, os.W_OK | os.X_OK):
            raise ConfigError(f"The storage directory {self.base_dir} is not writable.")

    @contextlib.contextmanager
    def model(self, uniqueid: str, dirhash: str, *, fetch: bool = True) -> Iterator[str]:
        yield self._dir(uniqueid, dirhash)

    def run_logs_zip(self, uniqueid: str, dirhash: str, runid: str) -> bytes:
        return uploads.zip_directory(store.run_log_dir(self._dir(uniqueid, dirhash), runid))

    def update(
        self, uniqueid: str, dirhash: str, change: Callable[[str], T], *, replace: bool = False
    ) -> T:
        # The store's writer lock makes each change one step (see store.writer_lock).
        return change(self._dir(uniqueid, dirhash))

    def delete(self, uniqueid: str) -> None:
        """Each version in turn with its writers (`store.delete_model`), then the
        model's directory if nothing new appeared in it meanwhile."""
        path = os.path.join(self.base_dir, uniqueid)
        try:
            versions = sorted(os.listdir(path))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(
                f"The model {uniqueid} could not be deleted ({exc.strerror})."
            ) from None
        for name in versions:
            version = os.path.join(path, name)
            if os.path.isdir(version) and not os.path.islink(version):
                store.delete_model(version)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(version)
        with contextlib.suppress(OSError):  # not empty: a training started since
            os.rmdir(path)
        log.info("deleted %s", path)

    def _dir(self, uniqueid: str, dirhash: str) -> str:
        return os.path.join(self.base_dir, uniqueid, dirhash)
