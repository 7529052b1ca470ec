"""Where the server keeps models between requests.

The core jobs (`mlbackend.actions`) work on a model directory, Moodle's
OUTPUTDIR layout. A storage hands a request such a directory:

- `LocalStorage` (in `mlbackend.server.local`) gives `BASEDIR/UNIQUEID/DIRHASH` itself; the store's
  atomic saves and writer locks make concurrent requests safe.
- `S3Storage` (in `mlbackend.server.s3`) fills a temporary directory from
  the bucket and writes the model back after training or import, so the
  server keeps nothing between requests and any number of servers behind a
  load balancer can share one bucket.

Identifiers reaching here were already reduced by `store.safe_name`. The
server picks one in `mlbackend.server.wsgi.open_storage`: this module knows
neither, so that they can import it.
"""
from __future__ import annotations

import abc
from typing import ContextManager

from mlbackend.contract import BackendError

class StorageError(BackendError):
    """The storage failed (S3 unreachable, a disk error); not the client's fault."""


class Storage(abc.ABC):
    """What the routes need from a place that keeps models."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where models are kept, for the start-up log."""

    def check(self) -> None:
        """Fail at start-up, not at the first request, when the storage is unusable."""

    @abc.abstractmethod
    def model(self, uniqueid: str, dirhash: str, *, fetch: bool = True,
              push: bool = False) -> ContextManager[str]:
        """A model directory for one request (a context manager).

        `fetch`: the request reads the stored model. `push`: the request may
        change it, and the change is kept when the block ends without error.
        """

    def keep_run_logs(self, uniqueid: str, dirhash: str, model_dir: str, runid: int) -> None:
        """Keep an evaluation's `logs/RUNID` for a later `/evaluationlog`."""

    @abc.abstractmethod
    def run_logs_zip(self, uniqueid: str, dirhash: str, runid: str) -> bytes:
        """That run's log directory as a zip; an empty zip when there is none."""

    @abc.abstractmethod
    def delete(self, uniqueid: str) -> None:
        """Remove every version of the model."""
