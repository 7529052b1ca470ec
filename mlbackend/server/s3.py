"""Models in an S3 bucket, so that several servers share them.

The contract's layout: the object `UNIQUEID/DIRHASH` is a zip of the
model's `classifier/` directory (here, `model.npz`). Every request that
needs the model downloads it into a temporary directory that is removed
when the request ends; training and import upload the new model. Nothing
survives a request on this machine, so a load balancer may send each
request to any server.

Evaluation logs are kept as `UNIQUEID/DIRHASH.evaluationlogs/RUNID.zip`
(the old server lost them in S3 mode): beside the model, not under it,
because S3-compatible stores on file systems (MinIO) refuse an object that
is also a "directory" of others; and '.' never occurs in a reduced
DIRHASH, so the name cannot collide with a model. `/deletemodel` removes
everything under `UNIQUEID/`.

Two servers training the same model at the same moment both upload, and
the later upload wins (S3 has no locks); within one server, writes to one
model take turns.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import tempfile
import threading
from typing import Any, Iterator

import boto3
import botocore.config
import botocore.exceptions

from mlbackend import store
from mlbackend.server import uploads
from mlbackend.server.storage import Storage, StorageError

log = logging.getLogger(__name__)

#: A model zip larger than this is not a model of ours (models are kilobytes to megabytes).
MAX_MODEL_BYTES = 256 << 20
_MISSING = ("NoSuchKey", "404", "NotFound")


class S3Storage(Storage):
    def __init__(self, bucket: str, endpoint_url: str | None = None,
                 client: Any | None = None) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        # boto3 clients are thread-safe (sessions are not): one for all threads.
        self.client = client or boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url,
            config=botocore.config.Config(retries={"max_attempts": 5, "mode": "standard"},
                                          max_pool_connections=32))
        self._locks: collections.defaultdict[str, threading.Lock] = (
            collections.defaultdict(threading.Lock))
        self._locks_guard = threading.Lock()

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3 bucket {self.bucket}{where}"

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise StorageError(f"The S3 bucket {self.bucket} cannot be used ({exc}). Check "
                               "the bucket name, the credentials (AWS_ACCESS_KEY_ID, "
                               "AWS_SECRET_ACCESS_KEY or a profile) and the endpoint "
                               "(--s3-endpoint-url or AWS_ENDPOINT_URL).") from None

    @contextlib.contextmanager
    def model(self, uniqueid: str, dirhash: str, *, fetch: bool = True,
              push: bool = False) -> Iterator[str]:
        key = f"{uniqueid}/{dirhash}"
        with contextlib.ExitStack() as stack:
            if push:
                stack.enter_context(self._lock(key))
            tmp = stack.enter_context(tempfile.TemporaryDirectory(
                prefix="mlbackend-s3-", ignore_cleanup_errors=True))
            model_dir = os.path.join(tmp, uniqueid, dirhash)
            os.makedirs(model_dir)
            if fetch:
                self._download_model(key, model_dir)
            before = _stamp(store.model_path(model_dir))
            yield model_dir
            if push:
                after = _stamp(store.model_path(model_dir))
                if after is not None and after != before:
                    self._upload_model(key, model_dir)

    def keep_run_logs(self, uniqueid: str, dirhash: str, model_dir: str, runid: int) -> None:
        data = uploads.zip_directory(store.run_log_dir(model_dir, runid))
        self._put(_logs_key(uniqueid, dirhash, str(runid)), data)

    def run_logs_zip(self, uniqueid: str, dirhash: str, runid: str) -> bytes:
        data = self._get(_logs_key(uniqueid, dirhash, runid))
        return data if data else uploads.zip_directory("")

    def delete(self, uniqueid: str) -> None:
        prefix = f"{uniqueid}/"
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket,
                                               Delete={"Objects": keys, "Quiet": True})
                    log.info("deleted %d objects under %s", len(keys), prefix)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise StorageError(f"The model {uniqueid} could not be deleted from S3 ({exc}).") \
                from None

    # ------------------------------------------------------------------

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[key]

    def _download_model(self, key: str, model_dir: str) -> None:
        data = self._get(key, limit=MAX_MODEL_BYTES)
        if not data:
            return
        with tempfile.NamedTemporaryFile(prefix="mlbackend-s3-", suffix=".zip") as f:
            f.write(data)
            f.flush()
            try:
                uploads.safe_extract(f.name, store.classifier_dir(model_dir), MAX_MODEL_BYTES)
            except uploads.UnsafeZip as exc:
                raise StorageError(f"The stored model {key} in S3 is not usable: "
                                   f"{exc.message}") from None

    def _upload_model(self, key: str, model_dir: str) -> None:
        data = uploads.zip_directory(store.classifier_dir(model_dir),
                                     skip=(store.LOCK_FILE, store.TEMP_PREFIX))
        self._put(key, data)
        log.info("uploaded %s (%d bytes)", key, len(data))

    def _get(self, key: str, limit: int | None = None) -> bytes | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
            size = int(obj.get("ContentLength") or 0)
            if limit is not None and size > limit:
                raise StorageError(f"The S3 object {key} has {size} bytes; a model has at "
                                   f"most {limit}.")
            return obj["Body"].read()
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return None
            raise StorageError(f"The S3 object {key} could not be read ({exc}).") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageError(f"The S3 object {key} could not be read ({exc}).") from None

    def _put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                   ContentType="application/zip")
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise StorageError(f"The S3 object {key} could not be written ({exc}).") from None


def _logs_key(uniqueid: str, dirhash: str, runid: str) -> str:
    return f"{uniqueid}/{dirhash}.evaluationlogs/{runid}.zip"


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
