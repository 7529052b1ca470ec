"""Talking to the S3 store within bounds: timeouts, a deadline, retries,
and a bound on the threads that wait on the store.

A store that accepts connections and never answers must not take the
server down. With botocore's defaults (a 60 s read timeout, up to 5
attempts) one request waited five minutes, and with every worker thread
waiting, even `/version` went unanswered. So:

- Every HTTP request to the store has a connect timeout and a read timeout
  (the longest the store may stay silent), and botocore's own retries are
  off: `Store.call` retries transient failures itself (no connection, a
  timeout, a cut answer, 5xx, throttling), with backoff, at most
  `MAX_TRIES` times, and starts an attempt only while the step's deadline
  leaves room for a whole one. So a
  step (reading a model, storing one, a delete) ends within the deadline,
  done or failed. Writes that must not be repeated blindly (a model's
  conditional PUT) use `Store.attempt` and retry themselves
  (`mlbackend.server.s3`).
- At most `max_waiting` threads wait on the store at once, and at most
  `per_key` on one object: a request that finds no place within
  `PLACE_WAIT` seconds is answered 503 with Retry-After. So a stalled store,
  or a stalled part of it (an object whose placement group hangs), leaves
  worker threads for `/version` and for the other models. Storing a
  finished training waits for a place within its deadline instead.
- Failures become `StorageError`s that say what failed in Moodle's terms;
  the store's own message (endpoint URL, bucket, key) goes to the server
  log only, with any credentials in URLs masked (`masked`).
"""

from __future__ import annotations

import collections
import contextlib
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from mlbackend.server.config import S3Limits
from mlbackend.server.gate import log_safe, masked
from mlbackend.server.storage import StorageError

#: Seconds a request waits for a place among those waiting on the store.
PLACE_WAIT = 1.0
#: Attempts of one request at most (botocore's old setting here): a store
#: that refuses connections is answered in about a second, not at the deadline.
MAX_TRIES = 5
#: Backoff between attempts: the first pause, and the longest.
BACKOFF_FIRST = 0.1
BACKOFF_MOST = 2.0
#: Longest a key is quoted in the log.
KEY_LOG_CHARS = 300

_THROTTLED = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "ConditionalRequestConflict",  # a concurrent conditional write: try again
    }
)


class Deadline:
    """The end of one step's time with the store."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()


class Unavailable(StorageError):
    """The store did not answer in time, or could not be reached: 503."""


class Busy(Unavailable):
    """Too many requests wait on the store already: 503 at once."""


def shown_key(key: str | None) -> str:
    """A key for the log: escaped and bounded (a client chose most of it)."""
    return log_safe(key, KEY_LOG_CHARS)


def transient(exc: BaseException) -> bool:
    """Whether trying again may help: no connection, a timeout, a cut
    answer, the store busy or failing (5xx, throttling)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return status(exc) >= 500 or status(exc) == 429 or code(exc) in _THROTTLED
    return isinstance(
        exc,
        (
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
            botocore.exceptions.IncompleteReadError,
            _BodyTooSlow,
        ),
    )


def never_sent(exc: BaseException) -> bool:
    """Whether the request surely never reached the store (no connection was
    made): a write that failed so was not applied."""
    return isinstance(
        exc,
        (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError),
    )


def code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def kind(exc: BaseException) -> str:
    """A short name of what went wrong, for the request counts and the log."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(status(exc) or code(exc) or "error")
    if isinstance(exc, (botocore.exceptions.ReadTimeoutError, _BodyTooSlow)):
        return "timeout"
    if isinstance(exc, botocore.exceptions.ConnectTimeoutError):
        return "connect-timeout"
    if isinstance(exc, botocore.exceptions.ConnectionError):
        return "no-connection"
    if isinstance(exc, botocore.exceptions.ConnectionClosedError):
        return "connection-closed"
    if isinstance(
        exc, (botocore.exceptions.HTTPClientError, botocore.exceptions.IncompleteReadError)
    ):
        return "answer-cut"
    return type(exc).__name__


class _BodyTooSlow(Exception):
    """An answer's body still coming when the deadline passed."""


class _BodyTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class RequestCounter:
    """The HTTP requests this server sent to the store, by operation and
    outcome, for the log when it stops: every attempt counts, retries and
    timeouts included (`GetObject 304`: a conditional GET that found the
    copy current; `PutObject timeout`: no answer within the read timeout)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(
        self,
        event_name: str = "",
        response_dict: dict[str, Any] | None = None,
        exception: BaseException | None = None,
        **_: Any,
    ) -> None:
        name = event_name.rsplit(".", 1)[-1] or "?"
        if exception is not None:
            name = f"{name} {kind(exception)}"
        else:
            code_ = int((response_dict or {}).get("status_code") or 0)
            if code_ >= 300:
                name = f"{name} {code_}"
        with self._lock:
            self.counts[name] += 1

    def summary(self) -> str:
        with self._lock:
            items = sorted(self.counts.items())
        return ", ".join(f"{name}={n}" for name, n in items) or "none"


class _Places:
    """Who may wait on the store: at most `total` threads, `per_key` on one key.

    A thread that holds a place keeps it through nested calls (a commit's
    PUT and the HEAD that checks it), so a step never waits for itself.
    """

    def __init__(self, total: int, per_key: int) -> None:
        self.total = total
        self.per_key = per_key
        self._all = threading.BoundedSemaphore(total)
        self._keys: collections.Counter[str] = collections.Counter()
        self._cond = threading.Condition()
        self._held = threading.local()

    @contextlib.contextmanager
    def place(self, key: str | None, wait: float) -> Iterator[None]:
        if getattr(self._held, "depth", 0):
            self._held.depth += 1
            try:
                yield
            finally:
                self._held.depth -= 1
            return
        end = time.monotonic() + wait
        if key is not None:
            with self._cond:
                while self._keys[key] >= self.per_key:
                    left = end - time.monotonic()
                    if left <= 0:
                        raise _NoPlace(key)
                    self._cond.wait(left)
                self._keys[key] += 1
        try:
            if not self._all.acquire(timeout=max(0.0, end - time.monotonic())):
                raise _NoPlace(None)
            try:
                self._held.depth = 1
                yield
            finally:
                self._held.depth = 0
                self._all.release()
        finally:
            if key is not None:
                with self._cond:
                    self._keys[key] -= 1
                    if self._keys[key] <= 0:
                        del self._keys[key]
                    self._cond.notify_all()


class _NoPlace(Exception):
    def __init__(self, key: str | None) -> None:
        super().__init__(key)
        self.key = key


class Store:
    """One bucket of one S3 endpoint, through one boto3 client (thread-safe)."""

    def __init__(
        self, bucket: str, endpoint_url: str | None, limits: S3Limits, client: Any | None = None
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.limits = limits
        self.client = client or boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            config=botocore.config.Config(
                connect_timeout=limits.connect_timeout,
                read_timeout=limits.read_timeout,
                # One attempt per call: retries are ours, within the deadline.
                retries={"total_max_attempts": 1, "mode": "standard"},
                max_pool_connections=32,
            ),
        )
        self.requests = RequestCounter()
        self.client.meta.events.register("response-received.s3", self.requests)
        self.places = _Places(limits.max_waiting, limits.per_key)

    def describe(self) -> str:
        where = f" at {masked(self.endpoint_url)}" if self.endpoint_url else ""
        return f"S3 bucket {self.bucket}{where}"

    def deadline(self) -> Deadline:
        return Deadline(self.limits.deadline)

    @contextlib.contextmanager
    def waiting(self, key: str | None, deadline: Deadline | None = None) -> Iterator[None]:
        """A place among the threads waiting on the store, for one step.

        Without `deadline`, a request that finds none within PLACE_WAIT is
        answered 503 (`Busy`); with one (a finished training to store), it
        waits its turn until the deadline.
        """
        wait = PLACE_WAIT if deadline is None else max(0.0, deadline.remaining())
        try:
            with self.places.place(key, wait):
                yield
        except _NoPlace as exc:
            which = "for this model " if exc.key is not None else ""
            raise Busy(
                f"Too many requests are waiting on the model store (S3) {which}at the moment "
                "(it is slow or not answering); nothing was changed. Try again later.",
                detail=f"no place among the requests waiting on S3 ({self.places.total} "
                f"at once, {self.places.per_key} per object) for {shown_key(exc.key)}",
                retry_after=self.limits.retry_after,
            ) from None

    def attempt(self, operation: str, **params: Any) -> dict[str, Any]:
        """One HTTP request; raises botocore's exceptions as they come."""
        result: dict[str, Any] = getattr(self.client, operation)(Bucket=self.bucket, **params)
        return result

    def may_try_again(self, deadline: Deadline, attempt: int) -> bool:
        """Pause before attempt `attempt + 1`; False after MAX_TRIES, or when
        the deadline leaves no room for a whole attempt after the pause."""
        if attempt >= MAX_TRIES:
            return False
        pause = min(BACKOFF_MOST, BACKOFF_FIRST * 2 ** (attempt - 1))
        pause = pause / 2 + random.uniform(0, pause / 2)
        if deadline.remaining() - pause < self.limits.attempt_seconds:
            return False
        time.sleep(pause)
        return True

    def call(
        self,
        operation: str,
        *,
        key: str | None = None,
        deadline: Deadline | None = None,
        max_body: int | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """One step: `operation`, retried on transient failures while the
        deadline allows. With `max_body`, the answer's body is read too (in
        the same attempt, so a cut body is tried again), as `Data`.

        Raises `Unavailable` when every attempt failed transiently, and the
        last `ClientError` (a 404, a 412, a refusal) or BotoCoreError as it is.
        """
        deadline = deadline or self.deadline()
        with self.waiting(key):
            tries = 0
            while True:
                tries += 1
                try:
                    answer = self.attempt(operation, **params)
                    if max_body is not None:
                        answer["Data"] = _read_body(answer, max_body, deadline)
                    return answer
                except _BodyTooLarge as exc:
                    raise StorageError(
                        "The stored model is larger than any model of this backend; "
                        "it was not read.",
                        detail=f"{operation} {shown_key(key)}: {exc.size} bytes, "
                        f"more than {max_body}",
                    ) from None
                except (
                    botocore.exceptions.BotoCoreError,
                    botocore.exceptions.ClientError,
                    _BodyTooSlow,
                ) as exc:
                    if not transient(exc) or not self.may_try_again(deadline, tries):
                        if transient(exc):
                            raise self.unavailable(operation, key, exc, tries) from None
                        raise

    def unavailable(
        self, operation: str, key: str | None, exc: BaseException, tries: int, message: str = ""
    ) -> Unavailable:
        return Unavailable(
            message
            or "The model store (S3) did not answer in time (it is slow or cannot be reached); "
            "nothing was changed. Try again later.",
            detail=self.detail(operation, key, exc, tries),
            retry_after=self.limits.retry_after,
        )

    def detail(self, operation: str, key: str | None, exc: BaseException, tries: int = 1) -> str:
        """For the server log: the operation, the key, the store's own words."""
        name = "".join(w[:1].upper() + w[1:] for w in operation.split("_"))  # GetObject
        after = f" after {tries} attempts" if tries > 1 else ""
        return f"S3 {name} of {shown_key(key)} failed{after}: {masked(str(exc))}"


def _read_body(answer: dict[str, Any], max_body: int, deadline: Deadline) -> bytes:
    size = int(answer.get("ContentLength") or 0)
    if size > max_body:
        answer["Body"].close()
        raise _BodyTooLarge(size)
    chunks: list[bytes] = []
    got = 0
    while True:
        if deadline.remaining() <= 0:
            answer["Body"].close()
            raise _BodyTooSlow()
        chunk = answer["Body"].read(1 << 16)
        if not chunk:
            return b"".join(chunks)
        got += len(chunk)
        if got > max_body:
            answer["Body"].close()
            raise _BodyTooLarge(got)
        chunks.append(chunk)
