"""The eight endpoints of Moodle's server mode, as a WSGI application.

Each route is thin: check the form, put the upload in a file, get a model
directory from the storage, call the same `mlbackend.actions` function the
command line calls, and format its answer. Built on Werkzeug (routing,
multipart parsing with size limits, Basic auth parsing) without Flask:
nothing here needs templates, sessions or Flask's globals, and every
dependency less is one less to freeze into the binary.

HTTP codes follow what Moodle's `mlbackend_python` does with them: it
throws on anything but 200, and reads the JSON `status` of a 200 answer.

- 401 for a missing or wrong user/password, before anything else runs
  (the body is not even parsed); 405 for a wrong method; 413 for an upload
  over the limit.
- Training, prediction, evaluation: 200 with the contract's JSON whenever
  the backend has an answer, errors included (a bad dataset is status 1,
  an untrained model status 2), so that Moodle shows the admin the message.
- 400 when the request itself is malformed (a field or file missing, an
  identifier too long, a zip we refuse), 503 for an export of a model that
  does not exist, 500 when the server failed, 503 with Retry-After when the
  model store (S3) is slow or unreachable; each with a JSON body that says
  why, in Moodle's terms, quoting at most a short prefix of what the client
  sent (the store's own words go to the server log).

`http_status` is the one place that decides.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from mlbackend import actions, reported_version, store, transfer
from mlbackend.contract import (
    GENERAL_ERROR,
    BackendError,
    NotTrainedError,
    WriteError,
    shown,
    to_json_line,
)
from mlbackend.server import uploads
from mlbackend.server.auth import Users, basic_credentials
from mlbackend.server.config import ServerConfig
from mlbackend.server.gate import log_safe, masked
from mlbackend.server.storage import ModelChanged, Storage, StorageError

log = logging.getLogger(__name__)

#: The WSGI environ key where the authenticated user is left for the access log.
USER_KEY = "mlbackend.user"
#: Endpoints whose answer is the contract's JSON, errors included.
JSON_ENDPOINTS = frozenset({"training", "prediction", "evaluation"})
#: Longest identifier accepted (`uniqueid`, `dirhash`, `trainedmodeldirhash`),
#: checked on the value as sent, before anything else uses it: a file
#: name's limit. Moodle's are 32 to 40 characters.
MAX_ID_CHARS = 255
#: Longest `runid` accepted: digits, Moodle's are milliseconds since 1970 (13).
MAX_RUNID_CHARS = 20
#: Characters of a refused value quoted in the answer.
QUOTED_CHARS = 20
#: Largest urlencoded body (Moodle sends `/deletemodel` one short field that
#: way): werkzeug reads such a body whole into memory, and its text-field
#: limit covers multipart bodies only.
MAX_URLENCODED_BYTES = 64 << 10
URLENCODED = "application/x-www-form-urlencoded"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class RequestError(BackendError):
    """The request is malformed: answered 400 (or `http_status`), never 200."""

    def __init__(self, message: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.http_status = http_status


def http_status(endpoint: str, exc: BackendError) -> int:
    """The HTTP code of a request that ended in `exc`, by what Moodle does with it.

    The JSON endpoints answer the backend's errors with a 200, so that Moodle
    shows the admin the message; elsewhere an error is the request's fault
    (400), a missing model's (503, export), a concurrent change's (409,
    import) or the server's (500).
    """
    if isinstance(exc, RequestError):
        return exc.http_status
    if isinstance(exc, StorageError):  # the store slow or unreachable: 503, else 500
        return 503 if exc.retry_after is not None else 500
    if endpoint in JSON_ENDPOINTS:
        return 200
    if isinstance(exc, NotTrainedError):
        return 503
    if isinstance(exc, ModelChanged):  # deleted or changed by another server meanwhile
        return 409
    if isinstance(exc, WriteError):
        return 500
    return 400


class MoodleApp:
    """The server's WSGI application; one instance serves every thread."""

    def __init__(self, config: ServerConfig, storage: Storage, users: Users) -> None:
        self.config = config
        self.storage = storage
        self.users = users
        self.trainings = threading.BoundedSemaphore(config.max_trainings)
        #: Absolute directories of this machine an error answer must not show.
        self.private_dirs = storage.private_paths()

        class LimitedRequest(Request):
            max_content_length = config.max_upload_bytes
            max_form_memory_size = 1 << 20  # the text fields, not the files
            max_form_parts = 100

        self.request_class = LimitedRequest
        self.url_map = Map(
            [
                Rule("/version", endpoint="version", methods=["GET"]),
                Rule("/training", endpoint="training", methods=["POST"]),
                Rule("/prediction", endpoint="prediction", methods=["POST"]),
                Rule("/evaluation", endpoint="evaluation", methods=["POST"]),
                Rule("/evaluationlog", endpoint="evaluationlog", methods=["GET"]),
                Rule("/export", endpoint="export", methods=["GET"]),
                Rule("/import", endpoint="import_", methods=["POST"]),
                Rule("/deletemodel", endpoint="deletemodel", methods=["POST"]),
            ],
            strict_slashes=False,
        )

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = self.request_class(environ)
        if request.mimetype == URLENCODED:
            request.max_content_length = MAX_URLENCODED_BYTES  # read whole: keep it small
        response = self.dispatch(request)
        return response(environ, start_response)

    # ------------------------------------------------------------------

    def dispatch(self, request: Request) -> Response:
        if request.path.rstrip("/") != "/version":
            user, password = basic_credentials(request.headers.get("Authorization")) or (None, None)
            if not self.users.check(user, password):
                return _text(
                    "Incorrect user and/or password.\n",
                    401,
                    {"WWW-Authenticate": 'Basic realm="mlbackend"'},
                )
            request.environ[USER_KEY] = user
        try:
            endpoint, _ = self.url_map.bind_to_environ(request.environ).match()
        except MethodNotAllowed as exc:
            return _text(
                f"Method {request.method} is not allowed here.\n",
                405,
                {"Allow": ", ".join(exc.valid_methods or [])},
            )
        except NotFound:
            return _text("No such endpoint.\n", 404)
        handler = getattr(self, "on_" + endpoint)
        try:
            return handler(request)
        except RequestEntityTooLarge:
            return self._json({"status": GENERAL_ERROR, "info": [self._too_large(request)]}, 413)
        except BackendError as exc:
            code = http_status(endpoint, exc)
            stored = exc if isinstance(exc, StorageError) else None
            if code >= 500:  # with the store's own words, which the answer leaves out
                detail = f" ({stored.detail})" if stored is not None and stored.detail else ""
                log.error(
                    "%s %s: %s%s", request.method, log_safe(request.path), exc.message, detail
                )
            response = self._json(exc.answer(), code)
            if stored is not None and stored.retry_after is not None:
                response.headers["Retry-After"] = str(stored.retry_after)
            return response
        except HTTPException as exc:  # e.g. a malformed multipart body
            return self._json(
                {"status": GENERAL_ERROR, "info": [exc.description or exc.name]}, exc.code or 400
            )
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                return self._unexpected(request, exc)
            # At the process's descriptor limit: not this request's fault,
            # and no traceback per request while it lasts.
            log.warning("%s %s: out of file descriptors", request.method, log_safe(request.path))
            return self._json(
                {
                    "status": GENERAL_ERROR,
                    "info": ["The server is out of file descriptors at the moment; try again."],
                },
                503,
            )
        except Exception as exc:  # noqa: BLE001 - every request gets an answer
            return self._unexpected(request, exc)

    def _unexpected(self, request: Request, exc: Exception) -> Response:
        log.error(
            "%s %s failed:\n%s",
            request.method,
            log_safe(request.path),
            masked(traceback.format_exc()),
        )
        return self._json(
            {
                "status": GENERAL_ERROR,
                "info": [f"Unexpected server error ({type(exc).__name__}). See the server log."],
            },
            500,
        )

    # ------------------------------------------------------------------
    # The endpoints

    def on_version(self, request: Request) -> Response:
        return _text(reported_version())

    def on_training(self, request: Request) -> Response:
        uniqueid, dirhash = _ids(request)
        with _request_dir() as tmp:
            dataset = _upload(request, "dataset", tmp)
            with self._training_slot():
                return self._json(
                    self.storage.update(
                        uniqueid, dirhash, lambda model_dir: actions.train(model_dir, dataset)
                    )
                )

    def on_prediction(self, request: Request) -> Response:
        uniqueid, dirhash = _ids(request)
        with _request_dir() as tmp:
            dataset = _upload(request, "dataset", tmp)
            with self.storage.model(uniqueid, dirhash, fetch=True) as model_dir:
                return self._json(actions.predict(model_dir, dataset))

    def on_evaluation(self, request: Request) -> Response:
        uniqueid, dirhash = _ids(request)
        min_score = _number(request, "minscore", float)
        max_deviation = _number(request, "maxdeviation", float)
        iterations = _number(request, "niterations", int)
        trained_hash = _id(request, "trainedmodeldirhash", required=False)
        with _request_dir() as tmp:
            dataset = _upload(request, "dataset", tmp)
            with self.storage.model(uniqueid, dirhash, fetch=False) as model_dir:
                if trained_hash:
                    with self.storage.model(uniqueid, trained_hash, fetch=True) as trained:
                        result = actions.evaluate(
                            model_dir,
                            dataset,
                            min_score,
                            max_deviation,
                            iterations,
                            trained_model_dir=trained,
                        )
                else:
                    with self._training_slot():
                        result = actions.evaluate(
                            model_dir, dataset, min_score, max_deviation, iterations
                        )
                self.storage.keep_run_logs(uniqueid, dirhash, model_dir, result["runid"])
            if not self.storage.keeps_model_dirs:
                # That directory is gone when the request ends: the logs are
                # in the storage, for /evaluationlog; Moodle adds no
                # TensorBoard hint for an empty `dir`.
                result["dir"] = ""
            return self._json(result)

    def on_evaluationlog(self, request: Request) -> Response:
        uniqueid, dirhash = _ids(request)
        raw = request.values.get("runid", "")
        _check_length("runid", raw, MAX_RUNID_CHARS)
        runid = "".join(c for c in raw if c.isascii() and c.isdigit())
        if not runid:
            raise RequestError("The field runid is missing or has no digits.")
        return _zip(self.storage.run_logs_zip(uniqueid, dirhash, runid), f"{runid}.zip")

    def on_export(self, request: Request) -> Response:
        uniqueid, dirhash = _ids(request)
        with _request_dir() as tmp, self.storage.model(uniqueid, dirhash, fetch=True) as model_dir:
            exported = actions.export(model_dir, os.path.join(tmp, "export"))
            return _zip(uploads.zip_directory(exported), "export.zip")

    def on_import_(self, request: Request) -> Response:
        uniqueid, dirhash = _ids(request)
        with _request_dir() as tmp:
            archive = _upload(request, "importzip", tmp)
            unpacked = os.path.join(tmp, "import")
            # What a model is made of, and nothing else of the zip, reaches the store.
            uploads.safe_extract(
                archive, unpacked, self.config.max_unzipped_bytes, keep=transfer.is_model_file
            )
            self.storage.update(
                uniqueid,
                dirhash,
                lambda model_dir: actions.import_(model_dir, unpacked),
                replace=True,
            )
        return _text("Ok")

    def on_deletemodel(self, request: Request) -> Response:
        uniqueid = _id(request, "uniqueid")
        self.storage.delete(uniqueid)
        return _text("Ok")

    # ------------------------------------------------------------------

    def _too_large(self, request: Request) -> str:
        """Which limit the request broke: werkzeug says only "too large"."""
        if request.mimetype == URLENCODED:
            return (
                f"The form is larger than the server accepts in a urlencoded body "
                f"({MAX_URLENCODED_BYTES >> 10} KiB); Moodle sends a few short fields."
            )
        if (request.content_length or 0) > self.config.max_upload_bytes:
            return (
                f"The upload is larger than the server accepts "
                f"({self.config.max_upload_bytes // (1 << 20)} MiB, mlbackend serve "
                f"--max-upload-mb)."
            )
        return (
            f"The request has more than {self.request_class.max_form_parts} form parts "
            f"or a text field over {self.request_class.max_form_memory_size >> 20} MiB; "
            "Moodle sends a few short fields and one file."
        )

    def _training_slot(self) -> _Slot:
        return _Slot(self.trainings)

    def _json(self, obj: dict[str, Any], status: int = 200) -> Response:
        """The contract's JSON answer; an error's messages without this
        machine's paths (`hide_paths`)."""
        if status != 200 or obj.get("status"):
            obj = dict(
                obj,
                info=[
                    hide_paths(i, self.private_dirs) if isinstance(i, str) else i
                    for i in obj.get("info", [])
                ],
            )
        return Response(to_json_line(obj) + "\n", status=status, mimetype="application/json")


class _Slot:
    """A place among the trainings allowed at once; waits (queues) when all are taken."""

    def __init__(self, semaphore: threading.BoundedSemaphore) -> None:
        self.semaphore = semaphore

    def __enter__(self) -> None:
        if not self.semaphore.acquire(blocking=False):
            log.info("all training slots busy; this request waits its turn")
            self.semaphore.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.semaphore.release()


#: Request directories are named REQUEST_PREFIX + the server's pid + "-",
#: so that a server starting can tell which ones a dead server left behind.
REQUEST_PREFIX = "mlbackend-req-"


def _request_dir() -> tempfile.TemporaryDirectory[str]:
    """A directory for this request's files, removed when the request ends."""
    return tempfile.TemporaryDirectory(
        prefix=f"{REQUEST_PREFIX}{os.getpid()}-", ignore_cleanup_errors=True
    )


def clean_request_dirs(temp_dir: str) -> int:
    """Remove the request directories that servers no longer running left in
    `temp_dir` (killed mid-request: SIGKILL, a crash, the machine stopping).
    A directory of a server still running is left alone. Returns how many."""
    removed = 0
    try:
        names = os.listdir(temp_dir)
    except OSError:
        return 0
    for name in names:
        pid, sep, _ = name[len(REQUEST_PREFIX) :].partition("-")
        if not name.startswith(REQUEST_PREFIX) or not sep or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and _running(int(pid)):
            continue
        store.remove_tree(os.path.join(temp_dir, name))
        removed += 1
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: running
        return True
    return True


def _id(request: Request, field: str, required: bool = True) -> str:
    """An identifier that names a directory (or an S3 key): at most
    `MAX_ID_CHARS` characters as sent, checked before anything else uses
    it, then reduced to Moodle's `[A-Za-z0-9_-]`. Optional ones are "" when
    absent."""
    raw = request.values.get(field)
    if raw is None:
        if not required:
            return ""
        raise RequestError(f"The field {field} is missing.")
    _check_length(field, raw, MAX_ID_CHARS)
    value = store.safe_name(raw)
    if not value and required:
        raise RequestError(
            f"The field {field} has no usable characters (letters, digits, '_' and '-')."
        )
    return value


def _check_length(field: str, raw: str, limit: int) -> None:
    if len(raw) > limit:
        raise RequestError(
            f"The field {field} has {len(raw)} characters; at most {limit} are accepted "
            f"(it starts {shown(raw[:QUOTED_CHARS])})."
        )


def _ids(request: Request) -> tuple[str, str]:
    return _id(request, "uniqueid"), _id(request, "dirhash")


def _number(request: Request, field: str, kind: type) -> Any:
    raw = request.values.get(field)
    if raw is None:
        raise RequestError(f"The field {field} is missing.")
    try:
        value = kind(raw.strip())
    except ValueError:
        raise RequestError(f"The field {field} is not a number: {raw[:40]!r}.") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"The field {field} is not a finite number.")
    return value


def _upload(request: Request, field: str, directory: str) -> str:
    """Save the uploaded file `field` in `directory`; returns its path."""
    upload = request.files.get(field)
    if upload is None:
        raise RequestError(f"The file {field} is missing from the request.")
    path = os.path.join(directory, field)
    upload.save(path)
    upload.close()
    return path


def hide_paths(message: str, private_dirs: list[str]) -> str:
    """An error message for a client, without the server's absolute paths:
    a model's path is shown from its uniqueid (which the client sent), an
    uploaded file's by its field name; the admin's log keeps the full text."""
    for root in private_dirs:
        message = message.replace(root.rstrip(os.sep) + os.sep, "")
    for temp in {tempfile.gettempdir(), os.path.realpath(tempfile.gettempdir())}:
        # The temporary root and the request's (or S3 copy's) own directory.
        message = re.sub(re.escape(temp.rstrip(os.sep) + os.sep) + r"[^/\s]+/?", "", message)
    return message


def _text(text: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(text, status=status, mimetype="text/plain", headers=headers)


def _zip(data: bytes, name: str) -> Response:
    return Response(
        data,
        mimetype="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
