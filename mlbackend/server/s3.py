"""Models in an S3 bucket, shared by several servers behind a load balancer.

The contract's layout: the object `UNIQUEID/DIRHASH` is a zip of the
model's `classifier/` directory (`model.npz`, or a moodlemlbackend model's
files). Evaluation logs are kept as `UNIQUEID/DIRHASH.evaluationlogs/RUNID.zip`
(the old server lost them in S3 mode): beside the model, not under it,
because S3-compatible stores on file systems (MinIO) refuse an object that
is also a "directory" of others; and '.' never occurs in a reduced
DIRHASH, so the name cannot collide with a model. `/deletemodel` removes
everything under `UNIQUEID/`.

Reading. A server keeps every version it has read (or written) unpacked
in a cache directory of its own, under the object's ETag. Each request that
reads a model asks the bucket with a conditional GET (`If-None-Match: ETAG`):
304, no body, when the cached version is still the stored one; the new
object otherwise; 404 when the model was deleted. So a prediction right
after another server trained the model uses the new model, and a warm
server downloads nothing.

Changing (training, import). Every write is a conditional PUT against what
the change started from: `If-Match: ETAG` of that version, or, when there
was no model, `If-None-Match: *`. S3 applies it only if the object is still
that version, atomically, so two servers can never both replace version N:

- another server changed the model meanwhile (412): the change runs again
  on the new version (a training then continues from the other training's
  result, as two trainings on one server do), at most `MAX_ATTEMPTS` times;
- the model was deleted meanwhile (404, or a new model of another lineage
  under the same key): the change is not kept, and the answer says so.

A first training "claims" the key before it starts, by putting an empty
model (a zip without files, read as "not trained") with `If-None-Match: *`.
That is what makes a delete during a first training visible to it: the
claim is deleted with the rest and the training's `If-Match` fails. A first
training that fails (its dataset refused) removes its claim again. Every
object carries a lineage id in its metadata, made when the model is first
created and kept by every later change; a delete ends it. Every zip carries
a random comment, so that no two writes have the same ETag.

Each write is applied once, whatever happens to its answer. It carries a
random write id in its metadata (and the write id of the version it
replaces), and only this module repeats it (botocore's retries are off, see
`mlbackend.server.s3client`), always with the same condition. So a repeat
of a write that was applied but whose answer was lost finds the object
changed (412); the object's write id (or its parent's) then says whether
the change was this write, which succeeded, or another server's, a real
conflict. When the store stops answering before that can be known, the
answer says the outcome is unknown, and the next request of the model on
this server finds out and logs it.

Within one server, changes of one model take turns (a lock per key), so
that conflicts are only ever between servers.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import secrets
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from mlbackend import store
from mlbackend.server import uploads
from mlbackend.server.config import S3Limits, ServerConfig
from mlbackend.server.gate import masked
from mlbackend.server.s3client import (
    Busy,
    Deadline,
    Store,
    Unavailable,
    code,
    never_sent,
    shown_key,
    status,
    transient,
)
from mlbackend.server.storage import ModelChanged, Storage, StorageError, T

log = logging.getLogger(__name__)

#: A model zip larger than this is not a model of ours (models are kilobytes to megabytes).
MAX_MODEL_BYTES = 256 << 20
#: Times a change runs when other servers keep changing the model under it.
MAX_ATTEMPTS = 3
#: Model versions kept unpacked on this server (a few hundred KB each).
CACHE_VERSIONS = 256
#: The object metadata naming a model's lineage (`x-amz-meta-mlbackend-lineage`).
LINEAGE = "mlbackend-lineage"
#: The random id of the write that made this version, and of the version it replaced.
WRITE = "mlbackend-write"
PARENT = "mlbackend-parent"
_MISSING = ("NoSuchKey", "404", "NotFound")
_CONFLICT = ("PreconditionFailed", "412")


@dataclass
class _Version:
    """One stored version of a model, unpacked in `model_dir` on this server."""

    key: str
    etag: str
    lineage: str | None
    model_dir: str
    #: The write id of this version, and of the version it replaced (metadata).
    write: str | None = None
    parent: str | None = None
    users: int = 0
    retired: bool = False

    @classmethod
    def of(cls, key: str, answer: dict[str, Any], model_dir: str = "") -> _Version:
        """The version a GET or HEAD answer describes."""
        meta = answer.get("Metadata") or {}
        return cls(
            key,
            str(answer["ETag"]),
            meta.get(LINEAGE),
            model_dir,
            meta.get(WRITE),
            meta.get(PARENT),
        )


class _VersionCache:
    """Key -> the newest version this server has seen, unpacked; thread-safe.

    A version in use by a request is never removed: replaced or evicted
    versions are removed when their last user is done.
    """

    def __init__(self, root: str, size: int) -> None:
        self.root = root
        self.size = size
        self._entries: collections.OrderedDict[str, _Version] = collections.OrderedDict()
        self._lock = threading.Lock()

    def checkout(self, key: str) -> _Version | None:
        with self._lock:
            version = self._entries.get(key)
            if version is not None:
                version.users += 1
                self._entries.move_to_end(key)
            return version

    def release(self, version: _Version) -> None:
        with self._lock:
            version.users -= 1
            gone = version.retired and version.users == 0
        if gone:
            store.remove_tree(version.model_dir)

    def install(self, version: _Version) -> _Version:
        """Make `version` (its directory already filled) the current one of its
        key, checked out; a newer one installed meanwhile by another request wins."""
        evicted = []
        with self._lock:
            current = self._entries.get(version.key)
            if current is not None and current.etag == version.etag:
                current.users += 1
                version.retired = True
                winner = current
            else:
                self._entries[version.key] = version
                self._entries.move_to_end(version.key)
                version.users += 1
                winner = version
                if current is not None:
                    current.retired = True
                while len(self._entries) > self.size:
                    _, old = self._entries.popitem(last=False)
                    old.retired = True
                    evicted.append(old)
            doomed = [
                v
                for v in (current, version, *evicted)
                if v is not None and v.retired and v.users == 0
            ]
        for v in doomed:
            store.remove_tree(v.model_dir)
        return winner

    def forget(self, prefix: str = "", key: str | None = None) -> None:
        """Drop the versions of `key`, or of every key starting with `prefix`."""
        with self._lock:
            doomed = []
            for k in [
                k for k in self._entries if k == key or (key is None and k.startswith(prefix))
            ]:
                version = self._entries.pop(k)
                version.retired = True
                if version.users == 0:
                    doomed.append(version)
        for v in doomed:
            store.remove_tree(v.model_dir)

    def new_dir(self) -> str:
        return tempfile.mkdtemp(prefix="v-", dir=self.root)


class S3Storage(Storage):
    keeps_model_dirs = False

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        client: Any | None = None,
        limits: S3Limits | None = None,
    ) -> None:
        self.bucket = bucket
        self.store = Store(bucket, endpoint_url, limits or ServerConfig().s3_limits(), client)
        self._locks: collections.defaultdict[str, threading.Lock] = collections.defaultdict(
            threading.Lock
        )
        self._locks_guard = threading.Lock()
        self._cache_dir: str | None = None
        self._cache_instance: _VersionCache | None = None
        #: Key -> the write id of a change whose outcome is unknown (its
        #: answer never came); the next request of the key finds out.
        self._pending: dict[str, str] = {}

    @property
    def _cache(self) -> _VersionCache:
        """Made at first use (after `check`): a server that does not start leaves none."""
        with self._locks_guard:
            if self._cache_instance is None:
                # Private to this process: two servers on one machine never share it.
                # The pid in the name tells a killed server's leftover from a live one's.
                self._cache_dir = tempfile.mkdtemp(prefix=f"mlbackend-s3-cache-{os.getpid()}-")
                self._cache_instance = _VersionCache(self._cache_dir, CACHE_VERSIONS)
            return self._cache_instance

    def describe(self) -> str:
        limits = self.store.limits
        return (
            f"{self.store.describe()} (connect timeout {limits.connect_timeout:g} s, read "
            f"timeout {limits.read_timeout:g} s, deadline {limits.deadline:g} s, at most "
            f"{limits.max_waiting} requests waiting on it)"
        )

    def check(self) -> None:
        """At start-up, for the operator: the bucket is named, the endpoint masked."""
        where = self.store.describe()
        try:
            self.store.call("head_bucket")
        except (
            StorageError,
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
        ) as exc:
            raise StorageError(
                f"The {where} cannot be used ({_told(exc)}). Check the bucket name, "
                "the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or a profile) "
                "and the endpoint (--s3-endpoint-url or AWS_ENDPOINT_URL)."
            ) from None
        self._check_conditional_writes(where)

    def _check_conditional_writes(self, where: str) -> None:
        """Refuse a store that ignores `If-None-Match` on PUT (some older S3-compatible
        stores): there, servers would silently overwrite each other's trainings.

        The probe object's name has a '.', which no reduced UNIQUEID has.
        """
        key = f".mlbackend/conditional-write-check-{secrets.token_hex(8)}"
        try:
            self.store.call("put_object", Key=key, Body=b"", IfNoneMatch="*")
            try:
                self.store.call("put_object", Key=key, Body=b"", IfNoneMatch="*")
            except botocore.exceptions.ClientError as exc:
                if _conflict(exc):
                    return
                raise
            finally:
                self.store.call("delete_object", Key=key)
        except (
            StorageError,
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
        ) as exc:
            raise StorageError(
                f"The {where} cannot be used: writing a check object failed "
                f"({_told(exc)}). The server needs s3:PutObject and s3:DeleteObject "
                "on the bucket."
            ) from None
        raise StorageError(
            f"The {where} ignores conditional writes (PUT with If-None-Match), which "
            "keep servers sharing the bucket from overwriting each other's models. Use a "
            "store that supports them (AWS S3 and current MinIO releases do)."
        )

    def close(self) -> None:
        log.info("S3 requests: %s", self.store.requests.summary())
        if self._cache_dir is not None:
            store.remove_tree(self._cache_dir)

    @contextlib.contextmanager
    def model(self, uniqueid: str, dirhash: str, *, fetch: bool = True) -> Iterator[str]:
        version = self._current(f"{uniqueid}/{dirhash}") if fetch else None
        if version is None:
            with tempfile.TemporaryDirectory(
                prefix="mlbackend-s3-", ignore_cleanup_errors=True
            ) as tmp:
                yield tmp
            return
        try:
            yield version.model_dir
        finally:
            self._cache.release(version)

    def update(
        self, uniqueid: str, dirhash: str, change: Callable[[str], T], *, replace: bool = False
    ) -> T:
        key = f"{uniqueid}/{dirhash}"
        with self._lock(key):
            for attempt in range(1, MAX_ATTEMPTS + 1):
                # A replacement needs only the version it replaces, not its
                # content: so an import also replaces an object nobody can read.
                base = self._head(key) if replace else self._current(key)
                try:
                    return self._change(key, base, change, replace)
                except _Conflict:
                    log.warning(
                        "%s changed on another server while this server changed "
                        "it (attempt %d of %d)%s",
                        shown_key(key),
                        attempt,
                        MAX_ATTEMPTS,
                        "; running the change again on the new version"
                        if attempt < MAX_ATTEMPTS
                        else "",
                    )
                finally:
                    if base is not None and not replace:
                        self._cache.release(base)
        raise ModelChanged(
            f"The model changed on other servers {MAX_ATTEMPTS} times while "
            "this server worked on it; this change was not saved. The stored "
            "model is the other servers' result; try again."
        )

    def keep_run_logs(self, uniqueid: str, dirhash: str, model_dir: str, runid: int) -> None:
        data = uploads.zip_directory(store.run_log_dir(model_dir, runid))
        key = _logs_key(uniqueid, dirhash, str(runid))
        with self._failing(
            "to store the evaluation's logs",
            "PutObject",
            key,
            "The evaluation ran, but its logs could not be stored: the model store (S3) "
            "did not answer in time. Try again later.",
        ):  # the same bytes again and again: repeating it is harmless
            self.store.call(
                "put_object", key=key, Key=key, Body=data, ContentType="application/zip"
            )

    def run_logs_zip(self, uniqueid: str, dirhash: str, runid: str) -> bytes:
        key = _logs_key(uniqueid, dirhash, runid)
        try:
            return bytes(
                self.store.call("get_object", key=key, Key=key, max_body=MAX_MODEL_BYTES)["Data"]
            )
        except botocore.exceptions.ClientError as exc:
            if code(exc) in _MISSING:
                return uploads.zip_directory("")
            raise self._refused(
                "to hand out the evaluation's logs", "GetObject", key, exc
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._refused(
                "to hand out the evaluation's logs", "GetObject", key, exc
            ) from None

    def delete(self, uniqueid: str) -> None:
        """Every object under `UNIQUEID/`. A change of the model running
        elsewhere fails its conditional PUT afterwards: its version is gone.
        Deleting again is harmless, so every request is simply repeated."""
        prefix = f"{uniqueid}/"
        deadline = self.store.deadline()
        try:
            with self._failing(
                "to delete the model",
                "DeleteObjects",
                prefix,
                "The model store (S3) did not answer in time while the model was deleted; "
                "it may be deleted in part. Deleting it again is safe: try again later.",
            ):
                self._delete_pages(prefix, deadline)
        finally:
            self._cache.forget(prefix)
        with self._locks_guard:
            for key in [k for k in self._pending if k.startswith(prefix)]:
                del self._pending[key]

    def _delete_pages(self, prefix: str, deadline: Deadline) -> None:
        token: dict[str, Any] = {}
        while True:
            page = self.store.call(
                "list_objects_v2", key=prefix, deadline=deadline, Prefix=prefix, **token
            )
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.store.call(
                    "delete_objects",
                    key=prefix,
                    deadline=deadline,
                    Delete={"Objects": keys, "Quiet": True},
                )
                log.info("deleted %d objects under %s", len(keys), shown_key(prefix))
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    @contextlib.contextmanager
    def _failing(self, doing: str, operation: str, key: str, unavailable: str) -> Iterator[None]:
        """Failures of the store in a step, said in Moodle's terms: `unavailable`
        when it did not answer in time, a refusal of `doing` otherwise."""
        try:
            yield
        except Unavailable as exc:
            raise _reworded(exc, unavailable) from None
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._refused(doing, operation, key, exc) from None

    # ------------------------------------------------------------------

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[key]

    def _current(self, key: str) -> _Version | None:
        """The stored version of `key`, checked out of the cache (None: no object).

        One conditional GET: 304 keeps the cached version, 200 brings the
        new one, 404 means there is no model (any more).
        """
        cached = self._cache.checkout(key)
        condition: dict[str, Any] = {"IfNoneMatch": cached.etag} if cached is not None else {}
        try:
            obj = self.store.call(
                "get_object", key=key, Key=key, max_body=MAX_MODEL_BYTES, **condition
            )
        except botocore.exceptions.ClientError as exc:
            if cached is not None and status(exc) == 304:
                self._settle_pending(key, cached)
                return cached
            if cached is not None:
                self._cache.release(cached)
            if code(exc) in _MISSING:
                self._cache.forget(key=key)
                self._settle_pending(key, None)
                return None
            raise self._refused("to hand out the model", "GetObject", key, exc) from None
        except BaseException as exc:
            if cached is not None:
                self._cache.release(cached)
            if isinstance(exc, botocore.exceptions.BotoCoreError):
                raise self._refused("to hand out the model", "GetObject", key, exc) from None
            raise
        if cached is not None:
            self._cache.release(cached)
        model_dir = self._cache.new_dir()
        try:
            _unpack(obj["Data"], key, model_dir)
        except BaseException:
            store.remove_tree(model_dir)
            raise
        version = _Version.of(key, obj, model_dir)
        self._settle_pending(key, version)
        return self._cache.install(version)

    def _head(self, key: str, deadline: Deadline | None = None) -> _Version | None:
        """The stored version of `key` without its content (not in the cache)."""
        try:
            version = _Version.of(
                key, self.store.call("head_object", key=key, deadline=deadline, Key=key)
            )
        except botocore.exceptions.ClientError as exc:
            if code(exc) in _MISSING:
                self._settle_pending(key, None)
                return None
            raise self._refused("to describe the model", "HeadObject", key, exc) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._refused("to describe the model", "HeadObject", key, exc) from None
        self._settle_pending(key, version)
        return version

    def _change(
        self, key: str, base: _Version | None, change: Callable[[str], T], replace: bool
    ) -> T:
        """Run the change once on a copy of `base` and write it conditionally."""
        claim = None
        if base is None and not replace:
            base = claim = self._claim(key)
        log.info(
            "changing %s from version %s",
            shown_key(key),
            base.etag if base is not None else "none",
        )
        lineage = (base.lineage if base is not None else None) or secrets.token_hex(16)
        work_dir = self._cache.new_dir()
        try:
            try:
                if base is not None and not replace:
                    # Under the copy's writer lock: a prediction may be converting a
                    # moodlemlbackend model in it (store.save_converted) at this moment.
                    with store.writer_lock(base.model_dir):
                        shutil.copytree(
                            store.classifier_dir(base.model_dir),
                            store.classifier_dir(work_dir),
                            ignore=shutil.ignore_patterns(store.LOCK_FILE, store.TEMP_PREFIX + "*"),
                        )
                result = change(work_dir)
            except BaseException:
                if claim is not None:  # a first training that failed leaves nothing behind
                    self._remove_claim(claim)
                raise
            data = _model_zip(work_dir)
            written, current = self._commit(
                key, data, base, lineage, "the trained or imported model"
            )
        except BaseException:
            store.remove_tree(work_dir)
            raise
        finally:
            if claim is not None:
                self._cache.release(claim)
        log.info("stored %s (%d bytes)", shown_key(key), len(data))
        if not current:  # stored, and already changed again by another server
            store.remove_tree(work_dir)
            return result
        # What this server just wrote is the current version: no download for it.
        written.model_dir = work_dir
        self._cache.release(self._cache.install(written))
        return result

    def _claim(self, key: str) -> _Version:
        """Create `key` as an empty model of a new lineage, so that a delete
        while the first training runs removes something the training checks."""
        try:
            claim, current = self._commit(
                key, _model_zip(None), None, secrets.token_hex(16), "the new, empty model"
            )
        except Unavailable as exc:
            raise _reworded(
                exc,
                "The model store (S3) did not answer in time, so the training did not start; "
                "nothing was trained or stored. Try again later.",
            ) from None
        if not current:  # another server trained on the claim already
            raise _Conflict()
        claim.model_dir = self._cache.new_dir()
        return self._cache.install(claim)

    def _remove_claim(self, claim: _Version) -> None:
        """Remove this server's claim, if it is still the stored version: a
        first training whose dataset was refused leaves no empty model."""
        key = claim.key
        try:
            stored = self._head(key)
            if stored is not None and stored.write == claim.write:
                self.store.call("delete_object", key=key, Key=key, IfMatch=claim.etag)
        except (
            StorageError,
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
        ) as exc:
            if not (
                isinstance(exc, botocore.exceptions.ClientError)
                and (_conflict(exc) or code(exc) in _MISSING)
            ):
                log.warning(
                    "the empty model %s of a first training that failed could not be "
                    "removed; it reads as not trained (%s)",
                    shown_key(key),
                    _reason(exc),
                )
            return
        self._cache.forget(key=key)

    def _commit(
        self, key: str, data: bytes, base: _Version | None, lineage: str, what: str
    ) -> tuple[_Version, bool]:
        """Store `data` as the version after `base` (None: there is none) with one
        conditional PUT, applied once however often it is sent. Returns the new
        version, and whether it is still the stored one.

        The PUT is repeated (after a timeout, a lost connection, a 5xx) only
        with its condition, so it cannot apply twice. When a repeat finds the
        object changed (412), the stored write id says whose change it is:
        this write's (applied, its answer lost: success), or another
        server's (`_Conflict`; `ModelChanged` when the model was deleted, or
        deleted and made anew, meanwhile). Raises `Unavailable` when the
        store did not take it, `OutcomeUnknown` when that cannot be known.
        """
        write = secrets.token_hex(16)
        metadata = {LINEAGE: lineage, WRITE: write}
        if base is not None and base.write:
            metadata[PARENT] = base.write
        condition = {"IfMatch": base.etag} if base is not None else {"IfNoneMatch": "*"}
        deadline = self.store.deadline()
        maybe_applied = False
        last: BaseException | None = None
        with self.store.waiting(key, deadline):
            tries = 0
            while True:
                tries += 1
                try:
                    answer = self.store.attempt(
                        "put_object",
                        Key=key,
                        Body=data,
                        ContentType="application/zip",
                        Metadata=metadata,
                        **condition,
                    )
                    parent = metadata.get(PARENT)
                    return _Version(key, str(answer["ETag"]), lineage, "", write, parent), True
                except botocore.exceptions.ClientError as exc:
                    if code(exc) in _MISSING:
                        raise ModelChanged(_deleted_message()) from None
                    if _conflict(exc):
                        found = self._whose(key, write, base)
                        return found, found.write == write
                    elif not transient(exc):
                        raise self._refused(f"to store {what}", "PutObject", key, exc) from None
                    else:
                        # A 503 (throttled, no store behind a balancer), a 429 or
                        # a 409 (another write under way) turn the write away;
                        # another 5xx may come after it was applied.
                        maybe_applied = maybe_applied or status(exc) not in (409, 429, 503)
                    last = exc
                except botocore.exceptions.BotoCoreError as exc:
                    if not transient(exc):
                        raise self._refused(f"to store {what}", "PutObject", key, exc) from None
                    maybe_applied = maybe_applied or not never_sent(exc)
                    last = exc
                except _Unknown as exc:  # the check of a 412 went unanswered
                    last = exc.cause
                if not self.store.may_try_again(deadline, tries):
                    break
        detail = self.store.detail("PutObject", key, last or Exception("no attempt"), tries)
        if not maybe_applied:
            raise self.store.unavailable(
                "PutObject",
                key,
                last or Exception("no attempt"),
                tries,
                f"The model store (S3) did not answer in time, so {what} was not stored. "
                "Try again later.",
            )
        with self._locks_guard:
            self._pending[key] = write
        log.warning(
            "%s: write %s may or may not have been applied; %s", shown_key(key), write, detail
        )
        raise OutcomeUnknown(
            f"The model store (S3) stopped answering after {what} was sent, so whether it "
            "was stored is unknown. This server checks at the next request of this "
            "model and logs the outcome; a training sent again continues from "
            "whichever version is stored.",
            detail=detail,
            retry_after=self.store.limits.retry_after,
        )

    def _whose(self, key: str, write: str, base: _Version | None) -> _Version:
        """After a 412: the stored version, if it is this write's (or was made
        from it); raises `_Conflict` or `ModelChanged` when it is another
        server's, `_Unknown` when the store does not say."""
        try:
            found = _Version.of(key, self.store.attempt("head_object", Key=key))
        except botocore.exceptions.ClientError as exc:
            if code(exc) in _MISSING:
                raise ModelChanged(_deleted_message()) from None
            raise _Unknown(exc) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise _Unknown(exc) from None
        if write in (found.write, found.parent):
            log.info("%s: write %s was applied, its answer lost", shown_key(key), write)
            return found
        if base is not None and base.lineage is not None and found.lineage != base.lineage:
            raise ModelChanged(_deleted_message())  # deleted, and made anew
        raise _Conflict()

    def _settle_pending(self, key: str, version: _Version | None) -> None:
        """The next request of a key whose last change had an unknown outcome: log it."""
        with self._locks_guard:
            write = self._pending.pop(key, None)
        if write is None:
            return
        if version is not None and write in (version.write, version.parent):
            log.warning(
                "%s: the change whose outcome was unknown (write %s) was stored after all",
                shown_key(key),
                write,
            )
        else:
            log.warning(
                "%s: the change whose outcome was unknown (write %s) was not stored",
                shown_key(key),
                write,
            )

    def _refused(self, doing: str, operation: str, key: str, exc: BaseException) -> StorageError:
        """A failure that trying again would not mend, in Moodle's terms; the
        store's own words go to the log."""
        return StorageError(
            f"The model store (S3) refused {doing} ({_reason(exc)}). The server log has "
            "the details.",
            detail=self.store.detail(operation, key, exc),
        )


class OutcomeUnknown(Unavailable):
    """A write was sent and its answer never came, nor could the store say
    whether it was applied."""


class _Conflict(Exception):
    """Another server wrote the model since this change read it."""


class _Unknown(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(cause)
        self.cause = cause


def _reworded(exc: Unavailable, message: str) -> Unavailable:
    """The same failure, said for what the request was doing (a request
    that found no place to wait says so as it is)."""
    if isinstance(exc, Busy):
        return exc
    return type(exc)(message, detail=exc.detail, retry_after=exc.retry_after)


def _conflict(exc: botocore.exceptions.ClientError) -> bool:
    return code(exc) in _CONFLICT or status(exc) == 412


def _reason(exc: BaseException) -> str:
    """What went wrong, without the store's URL, bucket or key: an error code."""
    if isinstance(exc, StorageError):
        return exc.message.rstrip(".")
    if isinstance(exc, botocore.exceptions.ClientError):
        return f"{code(exc) or 'error'}, HTTP {status(exc)}"
    return type(exc).__name__


def _told(exc: BaseException) -> str:
    """What the store said, for the operator starting a server (never for
    Moodle): its own words, the endpoint's credentials masked."""
    if isinstance(exc, StorageError):
        return exc.detail or exc.message
    return masked(str(exc))


def _deleted_message() -> str:
    return (
        "The model was deleted while this server changed it; the change was not saved, "
        "so that the deleted model does not come back."
    )


def _model_zip(model_dir: str | None) -> bytes:
    """The model's `classifier/` as zip bytes, with a random comment so that
    every write has its own ETag (an ETag is the MD5 of the bytes)."""
    source = store.classifier_dir(model_dir) if model_dir is not None else ""
    data = uploads.zip_directory(source, skip=(store.LOCK_FILE, store.TEMP_PREFIX))
    buf = io.BytesIO(data)
    with zipfile.ZipFile(buf, "a") as archive:
        archive.comment = b"mlbackend " + secrets.token_hex(16).encode()
    return buf.getvalue()


def _unpack(data: bytes, key: str, model_dir: str) -> None:
    with tempfile.NamedTemporaryFile(prefix="mlbackend-s3-", suffix=".zip") as f:
        f.write(data)
        f.flush()
        try:
            uploads.safe_extract(f.name, store.classifier_dir(model_dir), MAX_MODEL_BYTES)
        except uploads.UnsafeZip as exc:
            raise StorageError(
                f"The model stored in S3 is not usable: {exc.message}",
                detail=f"the S3 object {shown_key(key)} is not a usable model zip",
            ) from None


def _logs_key(uniqueid: str, dirhash: str, runid: str) -> str:
    return f"{uniqueid}/{dirhash}.evaluationlogs/{runid}.zip"
