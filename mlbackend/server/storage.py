"""Where the server keeps models between requests.

The core jobs (`mlbackend.actions`) work on a model directory, Moodle's
OUTPUTDIR layout. A storage hands a request such a directory:

- `LocalStorage` gives `BASEDIR/UNIQUEID/DIRHASH` itself; the store's
  atomic saves and writer locks make concurrent requests safe.
- `S3Storage` (in `mlbackend.server.s3`) fills a temporary directory from
  the bucket and writes the model back after training or import, so the
  server keeps nothing between requests and any number of servers behind a
  load balancer can share one bucket.

Identifiers reaching here were already reduced by `store.safe_name`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Iterator

from mlbackend.contract import BackendError
from mlbackend.server import uploads

log = logging.getLogger(__name__)

LOGS_DIR = "logs"


class StorageError(BackendError):
    """The storage failed (S3 unreachable, a disk error); not the client's fault."""


class Storage:
    """What the routes need from a place that keeps models."""

    def describe(self) -> str:
        raise NotImplementedError

    def check(self) -> None:
        """Fail at start-up, not at the first request, when the storage is unusable."""

    @contextlib.contextmanager
    def model(self, uniqueid: str, dirhash: str, *, fetch: bool = True,
              push: bool = False) -> Iterator[str]:
        """A model directory for one request.

        `fetch`: the request reads the stored model. `push`: the request may
        change it, and the change is kept when the block ends without error.
        """
        raise NotImplementedError
        yield ""  # pragma: no cover

    def keep_run_logs(self, uniqueid: str, dirhash: str, model_dir: str, runid: int) -> None:
        """Keep an evaluation's `logs/RUNID` for a later `/evaluationlog`."""

    def run_logs_zip(self, uniqueid: str, dirhash: str, runid: str) -> bytes:
        """That run's log directory as a zip; an empty zip when there is none."""
        raise NotImplementedError

    def delete(self, uniqueid: str) -> None:
        """Remove every version of the model."""
        raise NotImplementedError


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
        return uploads.zip_directory(os.path.join(self._dir(uniqueid, dirhash), LOGS_DIR, runid))

    def delete(self, uniqueid: str) -> None:
        path = os.path.join(self.base_dir, uniqueid)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            log.info("deleted %s", path)

    def _dir(self, uniqueid: str, dirhash: str) -> str:
        return os.path.join(self.base_dir, uniqueid, dirhash)


def open_storage(storage_dir: str | None, s3_bucket: str | None,
                 s3_endpoint_url: str | None) -> Storage:
    if s3_bucket:
        from mlbackend.server.s3 import S3Storage  # boto3: only with a bucket

        return S3Storage(s3_bucket, endpoint_url=s3_endpoint_url)
    assert storage_dir is not None
    return LocalStorage(storage_dir)
