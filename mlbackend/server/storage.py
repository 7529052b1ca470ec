"""Where the server keeps models between requests.

The core jobs (`mlbackend.actions`) work on a model directory, Moodle's
OUTPUTDIR layout. A storage hands a request such a directory:

- `LocalStorage` (in `mlbackend.server.local`) gives `BASEDIR/UNIQUEID/DIRHASH` itself; the store's
  atomic saves and writer locks make concurrent requests safe.
- `S3Storage` (in `mlbackend.server.s3`) keeps each model as one object in a
  bucket shared by any number of servers behind a load balancer. A server
  keeps the versions it has read in a local cache, checked against the
  bucket on every request; a change (training, import) is written with a
  conditional PUT, so it applies to the version it started from or not at
  all (then it runs again on the newer version).

A change of a model goes through `update`, which may run it more than
once: that is why it takes a function, not a block.

Identifiers reaching here were already reduced by `store.safe_name`. The
server picks one by its configuration (`mlbackend.server.wsgi.open_storage`,
`ServerConfig.storage_kind`): this module knows neither, so that they can
import it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TypeVar

from mlbackend.contract import BackendError

T = TypeVar("T")


class StorageError(BackendError):
    """The storage failed (S3 unreachable, a disk error); not the client's fault.

    `message` says what failed in Moodle's terms; `detail` (the store's own
    words: endpoint, bucket, key) goes to the server log only. With
    `retry_after` (seconds), the failure is passing (the store slow or
    unreachable): answered 503 with that Retry-After, else 500.
    """

    def __init__(self, message: str, detail: str = "", retry_after: int | None = None) -> None:
        super().__init__(message)
        self.detail = detail
        self.retry_after = retry_after


class ModelChanged(BackendError):
    """The model was deleted, or changed too often, while a change of it ran:
    the change was not kept. Not a failure of the server; the answer says why."""


class Storage(abc.ABC):
    """What the routes need from a place that keeps models."""

    #: Whether model directories (and so an evaluation's `dir`) outlive the request.
    keeps_model_dirs = True

    @abc.abstractmethod
    def describe(self) -> str:
        """Where models are kept, for the start-up log."""

    def check(self) -> None:  # noqa: B027 - a hook: most storages need nothing
        """Fail at start-up, not at the first request, when the storage is unusable."""

    def close(self) -> None:  # noqa: B027 - a hook: most storages need nothing
        """The server stops: release what the storage holds on this machine."""

    def private_paths(self) -> list[str]:
        """Absolute directories of this machine that an error answer must not
        show a client (`mlbackend.server.app.hide_paths`); the temporary
        directory is always hidden."""
        return []

    @abc.abstractmethod
    def model(
        self, uniqueid: str, dirhash: str, *, fetch: bool = True
    ) -> AbstractContextManager[str]:
        """A model directory for one request that reads the model (a context manager).

        `fetch`: the request reads the stored model; without it, a directory
        for what the request writes beside it (an evaluation's logs).
        Changes made to the model there are not kept: use `update`.
        """

    @abc.abstractmethod
    def update(
        self, uniqueid: str, dirhash: str, change: Callable[[str], T], *, replace: bool = False
    ) -> T:
        """Run `change(model_dir)` and keep what it leaves there, as one step.

        `replace`: the change does not read the stored model (an import),
        so it gets an empty directory. The change may run again when another
        server changed the model meanwhile; raises `ModelChanged` when the
        model was deleted meanwhile, or when it kept changing.
        """

    def keep_run_logs(self, uniqueid: str, dirhash: str, model_dir: str, runid: int) -> None:  # noqa: B027
        """Keep an evaluation's `logs/RUNID` for a later `/evaluationlog`."""

    @abc.abstractmethod
    def run_logs_zip(self, uniqueid: str, dirhash: str, runid: str) -> bytes:
        """That run's log directory as a zip; an empty zip when there is none."""

    @abc.abstractmethod
    def delete(self, uniqueid: str) -> None:
        """Remove every version of the model."""
