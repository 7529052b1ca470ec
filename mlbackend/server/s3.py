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
claim is deleted with the rest and the training's `If-Match` fails. Every
object carries a lineage id in its metadata, made when the model is first
created and kept by every later change; a delete ends it. Every zip carries
a random comment, so that no two writes have the same ETag.

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

import boto3
import botocore.config
import botocore.exceptions

from mlbackend import store
from mlbackend.server import uploads
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
_MISSING = ("NoSuchKey", "404", "NotFound")
_CONFLICT = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


@dataclass
class _Version:
    """One stored version of a model, unpacked in `model_dir` on this server."""

    key: str
    etag: str
    lineage: str | None
    model_dir: str
    users: int = 0
    retired: bool = False


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


class _RequestCounter:
    """S3 requests this server made, by operation and outcome, for the log.

    GetObject is split: `GetObject` downloaded a body, `GetObject 304` was a
    conditional GET answered "not modified" (no body).
    """

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, http_response: Any = None, model: Any = None, **_: Any) -> None:
        name = getattr(model, "name", "?")
        status = getattr(http_response, "status_code", 0)
        if status >= 300:
            name = f"{name} {status}"
        with self._lock:
            self.counts[name] += 1

    def summary(self) -> str:
        with self._lock:
            items = sorted(self.counts.items())
        return ", ".join(f"{name}={n}" for name, n in items) or "none"


class S3Storage(Storage):
    keeps_model_dirs = False

    def __init__(
        self, bucket: str, endpoint_url: str | None = None, client: Any | None = None
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        # boto3 clients are thread-safe (sessions are not): one for all threads.
        self.client = client or boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            config=botocore.config.Config(
                retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32
            ),
        )
        self.requests = _RequestCounter()
        self.client.meta.events.register("after-call.s3", self.requests)
        self._locks: collections.defaultdict[str, threading.Lock] = collections.defaultdict(
            threading.Lock
        )
        self._locks_guard = threading.Lock()
        self._cache_dir: str | None = None
        self._cache_instance: _VersionCache | None = None

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
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3 bucket {self.bucket}{where}"

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise StorageError(
                f"The S3 bucket {self.bucket} cannot be used ({exc}). Check "
                "the bucket name, the credentials (AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY or a profile) and the endpoint "
                "(--s3-endpoint-url or AWS_ENDPOINT_URL)."
            ) from None
        self._check_conditional_writes()

    def _check_conditional_writes(self) -> None:
        """Refuse a store that ignores `If-None-Match` on PUT (some older S3-compatible
        stores): there, servers would silently overwrite each other's trainings.

        The probe object's name has a '.', which no reduced UNIQUEID has.
        """
        key = f".mlbackend/conditional-write-check-{secrets.token_hex(8)}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"", IfNoneMatch="*")
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=b"", IfNoneMatch="*")
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in _CONFLICT or _status(exc) in (409, 412):
                    return
                raise
            finally:
                self.client.delete_object(Bucket=self.bucket, Key=key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise StorageError(
                f"The S3 bucket {self.bucket} cannot be used: writing a check "
                f"object failed ({exc}). The server needs s3:PutObject and "
                "s3:DeleteObject on the bucket."
            ) from None
        raise StorageError(
            f"The S3 store of bucket {self.bucket} ignores conditional writes "
            "(PUT with If-None-Match), which keep servers sharing the bucket "
            "from overwriting each other's models. Use a store that supports "
            "them (AWS S3 and current MinIO releases do)."
        )

    def close(self) -> None:
        log.info("S3 requests: %s", self.requests.summary())
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
                        key,
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
        self._put(_logs_key(uniqueid, dirhash, str(runid)), data)

    def run_logs_zip(self, uniqueid: str, dirhash: str, runid: str) -> bytes:
        key = _logs_key(uniqueid, dirhash, runid)
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
            return _read_body(obj, key)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING:
                return uploads.zip_directory("")
            raise StorageError(f"The S3 object {key} could not be read ({exc}).") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageError(f"The S3 object {key} could not be read ({exc}).") from None

    def delete(self, uniqueid: str) -> None:
        """Every object under `UNIQUEID/`. A change of the model running
        elsewhere fails its conditional PUT afterwards: its version is gone."""
        prefix = f"{uniqueid}/"
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                    )
                    log.info("deleted %d objects under %s", len(keys), prefix)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise StorageError(
                f"The model {uniqueid} could not be deleted from S3 ({exc})."
            ) from None
        finally:
            self._cache.forget(prefix)

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
        condition = {"IfNoneMatch": cached.etag} if cached is not None else {}
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key, **condition)
        except botocore.exceptions.ClientError as exc:
            if cached is not None and _status(exc) == 304:
                return cached
            if cached is not None:
                self._cache.release(cached)
            if _code(exc) in _MISSING:
                self._cache.forget(key=key)
                return None
            raise StorageError(f"The S3 object {key} could not be read ({exc}).") from None
        except botocore.exceptions.BotoCoreError as exc:
            if cached is not None:
                self._cache.release(cached)
            raise StorageError(f"The S3 object {key} could not be read ({exc}).") from None
        if cached is not None:
            self._cache.release(cached)
        data = _read_body(obj, key)
        model_dir = self._cache.new_dir()
        try:
            _unpack(data, key, model_dir)
        except BaseException:
            store.remove_tree(model_dir)
            raise
        lineage = (obj.get("Metadata") or {}).get(LINEAGE)
        return self._cache.install(_Version(key, obj["ETag"], lineage, model_dir))

    def _head(self, key: str) -> _Version | None:
        """The stored version of `key` without its content (not in the cache)."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise StorageError(f"The S3 object {key} could not be read ({exc}).") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageError(f"The S3 object {key} could not be read ({exc}).") from None
        return _Version(key, str(head["ETag"]), (head.get("Metadata") or {}).get(LINEAGE), "")

    def _change(
        self, key: str, base: _Version | None, change: Callable[[str], T], replace: bool
    ) -> T:
        """Run the change once on a copy of `base` and write it conditionally."""
        claim = None
        if base is None and not replace:
            base = claim = self._claim(key)
        log.info("changing %s from version %s", key, base.etag if base is not None else "none")
        lineage = base.lineage if base is not None else None
        work_dir = self._cache.new_dir()
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
            data = _model_zip(work_dir)
            etag = self._put_model(key, data, base, lineage or secrets.token_hex(16))
        except BaseException:
            store.remove_tree(work_dir)
            raise
        finally:
            if claim is not None:
                self._cache.release(claim)
        log.info("stored %s (%d bytes)", key, len(data))
        # What this server just wrote is the current version: no download for it.
        self._cache.release(self._cache.install(_Version(key, etag, lineage, work_dir)))
        return result

    def _claim(self, key: str) -> _Version:
        """Create `key` as an empty model of a new lineage, so that a delete
        while the first training runs removes something the training checks."""
        lineage = secrets.token_hex(16)
        try:
            answer = self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=_model_zip(None),
                ContentType="application/zip",
                IfNoneMatch="*",
                Metadata={LINEAGE: lineage},
            )
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _CONFLICT or _status(exc) in (409, 412):
                raise _Conflict() from None  # another server created it first
            raise StorageError(f"The S3 object {key} could not be written ({exc}).") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageError(f"The S3 object {key} could not be written ({exc}).") from None
        model_dir = self._cache.new_dir()
        return self._cache.install(_Version(key, answer["ETag"], lineage, model_dir))

    def _put_model(self, key: str, data: bytes, base: _Version | None, lineage: str) -> str:
        condition = {"IfMatch": base.etag} if base is not None else {"IfNoneMatch": "*"}
        try:
            answer = self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType="application/zip",
                Metadata={LINEAGE: lineage},
                **condition,
            )
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING:
                raise ModelChanged(_deleted_message()) from None
            if _code(exc) in _CONFLICT or _status(exc) in (409, 412):
                if base is not None and base.lineage is not None:
                    self._check_lineage(key, base.lineage)
                raise _Conflict() from None
            raise StorageError(f"The S3 object {key} could not be written ({exc}).") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageError(f"The S3 object {key} could not be written ({exc}).") from None
        return str(answer["ETag"])

    def _check_lineage(self, key: str, lineage: str) -> None:
        """After a conflict: was the model deleted and made anew meanwhile?"""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING:
                raise ModelChanged(_deleted_message()) from None
            raise StorageError(f"The S3 object {key} could not be read ({exc}).") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageError(f"The S3 object {key} could not be read ({exc}).") from None
        if (head.get("Metadata") or {}).get(LINEAGE) != lineage:
            raise ModelChanged(_deleted_message())

    def _put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType="application/zip"
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise StorageError(f"The S3 object {key} could not be written ({exc}).") from None


class _Conflict(Exception):
    """Another server wrote the model since this change read it."""


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
                f"The stored model {key} in S3 is not usable: {exc.message}"
            ) from None


def _read_body(obj: dict[str, Any], key: str) -> bytes:
    size = int(obj.get("ContentLength") or 0)
    if size > MAX_MODEL_BYTES:
        raise StorageError(
            f"The S3 object {key} has {size} bytes; a model has at most {MAX_MODEL_BYTES}."
        )
    try:
        return bytes(obj["Body"].read())
    except botocore.exceptions.BotoCoreError as exc:
        raise StorageError(f"The S3 object {key} could not be read ({exc}).") from None


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _logs_key(uniqueid: str, dirhash: str, runid: str) -> str:
    return f"{uniqueid}/{dirhash}.evaluationlogs/{runid}.zip"
