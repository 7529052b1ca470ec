"""Running the application: the access log and the WSGI server.

Waitress serves it: a production WSGI server in pure Python (so it freezes
with PyInstaller like the rest), threaded, and it reads each request body
completely (spooling large ones to anonymous temporary files) before the
application sees it, so a slow client never holds a training slot. Before
any body is read, `mlbackend.server.gate` checks the client's credentials
and limits what an unauthenticated client can hold.
"""

from __future__ import annotations

import logging
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

from mlbackend import reported_version
from mlbackend.contract import BackendError
from mlbackend.server import gate
from mlbackend.server.app import USER_KEY, MoodleApp, WSGIApp, clean_request_dirs
from mlbackend.server.auth import Users
from mlbackend.server.config import USERS_ENV, ServerConfig
from mlbackend.server.gate import access_log, log_safe
from mlbackend.server.local import LocalStorage
from mlbackend.server.storage import Storage

log = logging.getLogger("mlbackend.server")

#: Room for the multipart framing around an upload of the maximum size.
BODY_SLACK = 1 << 20
#: Seconds an idle connection stays open (waitress' default is 120).
CHANNEL_TIMEOUT = 30
#: Most connections open at once by default (waitress' default is 100; each
#: costs a socket, and the main loop's poll() goes over every one of them).
CONNECTION_LIMIT = 1000
#: What the connection limit is sized from: the process's descriptor limit,
#: less what the server keeps for itself (its listening socket, logs, S3
#: connections, TensorFlow) and for each worker thread (a request's upload,
#: its spooled copy, the model, the answer), then two per connection (its
#: socket, and its request body when spooled to a temporary file).
RESERVED_DESCRIPTORS = 64
DESCRIPTORS_PER_CONNECTION = 2
#: Slack of waitress' own connection limit over ours (`gate.Door` keeps
#: ours; waitress' only backs it up).
WAITRESS_LIMIT_SLACK = 64


def raise_descriptor_limit() -> int:
    """Raise the soft limit of open files (RLIMIT_NOFILE) to the hard one
    (systemd's default soft limit is 1,024, its hard one 524,288); returns
    the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20  # Linux's fs.nr_open default; infinity is not accepted
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning(
                "could not raise the limit of open files from %d to %d (%s)", soft, hard, exc
            )
    return int(soft)


def connection_limit(descriptors: int, workers: int) -> int:
    """The connections a process allowed `descriptors` open files can hold,
    at most `CONNECTION_LIMIT`, at least `gate.MIN_CONNECTIONS`."""
    budget = descriptors - RESERVED_DESCRIPTORS - gate.DESCRIPTORS_PER_WORKER * workers
    return max(gate.MIN_CONNECTIONS, min(CONNECTION_LIMIT, budget // DESCRIPTORS_PER_CONNECTION))


class AccessLog:
    """One line per request on stderr, written when the answer has been sent.

    `127.0.0.1 moodle "POST /prediction" 200 5234 0.012s`: client, user (or
    `-`), request line without the query, status, bytes sent, seconds.
    Passwords and form values never appear.
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        state: dict[str, Any] = {"status": "-", "bytes": 0}

        def record_start(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
            state["status"] = status.split(" ", 1)[0]
            return start_response(status, headers, *rest)

        try:
            body = self.app(environ, record_start)
            try:
                for chunk in body:
                    state["bytes"] += len(chunk)
                    yield chunk
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
        finally:
            access_log.info(
                '%s %s "%s %s" %s %d %.3fs',
                log_safe(environ.get("REMOTE_ADDR")),
                log_safe(environ.get(USER_KEY)),
                log_safe(environ.get("REQUEST_METHOD")),
                log_safe(environ.get("PATH_INFO")),
                state["status"],
                state["bytes"],
                time.perf_counter() - started,
            )


def build_app(
    config: ServerConfig, storage: Storage | None = None, users: Users | None = None
) -> WSGIApp:
    """The whole application for this configuration; checks users and storage first."""
    users = users or Users.from_env()
    if storage is None:
        storage = open_storage(config)
    storage.check()
    log.info(
        "%d user(s); models in %s; at most %d training(s) at once",
        len(users),
        storage.describe(),
        config.max_trainings,
    )
    for user in users.with_well_known_password():
        log.warning(
            "%s\nUser %r has the well-known test password of Moodle's CI and "
            "moodle-docker: anyone who can reach this server can use it. Fine for a "
            "test site; on any other, set %s (mlbackend passwd).\n%s",
            "!" * 78,
            user,
            USERS_ENV,
            "!" * 78,
        )
    return AccessLog(MoodleApp(config, storage, users))


def serve(config: ServerConfig) -> None:
    """Build the application and hand it to waitress until SIGTERM or Ctrl-C."""
    import waitress.server

    _configure_logging()
    if config.temp_dir:
        tempfile.tempdir = config.temp_dir  # uploads, waitress' spooled bodies, S3 copies
    users = Users.from_env()
    storage = open_storage(config)
    app = build_app(config, storage, users)
    removed = clean_request_dirs(tempfile.gettempdir())
    if removed:
        log.warning(
            "removed %d request directories that a stopped server left in %s",
            removed,
            tempfile.gettempdir(),
        )
    descriptors = raise_descriptor_limit()
    limit = config.max_connections or connection_limit(descriptors, config.workers)
    needed = (
        RESERVED_DESCRIPTORS
        + gate.DESCRIPTORS_PER_WORKER * config.workers
        + DESCRIPTORS_PER_CONNECTION * limit
    )
    if needed > descriptors:
        log.warning(
            "%d connections may need %d file descriptors, more than this process may open "
            "(%d, RLIMIT_NOFILE); when they run out, the server closes waiting connections "
            "and lowers its limit",
            limit,
            needed,
            descriptors,
        )
    options: dict[str, Any] = dict(
        host=config.host,
        port=config.port,
        threads=config.workers,
        ident="mlbackend",
        max_request_body_size=config.max_upload_bytes + BODY_SLACK,
        max_request_header_size=gate.MAX_HEADER_BYTES,
        # Idle connections go after CHANNEL_TIMEOUT s, checked every few
        # seconds (also for headers overdue, see gate); room for many
        # clients, each limited to gate.MAX_CONNECTIONS_PER_CLIENT; the
        # limit itself is the gate's (it makes room for new clients).
        channel_timeout=CHANNEL_TIMEOUT,
        cleanup_interval=int(min(5, max(1, config.header_timeout // 2))),
        connection_limit=limit + WAITRESS_LIMIT_SLACK,
        # poll(), not select(): select() fails on a descriptor above 1,023,
        # which a raised descriptor limit allows.
        asyncore_use_poll=True,
    )
    if config.trusted_proxy:
        options.update(
            trusted_proxy=config.trusted_proxy,
            trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto"},
            clear_untrusted_proxy_headers=True,
        )
    try:
        server = waitress.server.create_server(app, **options)
    except OSError as exc:
        raise BackendError(
            f"Cannot listen on {config.host}:{config.port} ({exc.strerror or exc})."
        ) from None
    door = gate.install(
        server, gate.Gate(users, config.trusted_proxy, config.header_timeout), limit
    )
    signal.signal(signal.SIGTERM, _stop)
    log.info(
        "mlbackend %s serving Moodle on http://%s:%s/ (%d threads, at most %d connections, "
        "%d file descriptors)",
        reported_version(),
        config.host,
        server.effective_port,
        config.workers,
        door.limit,
        descriptors,
    )
    try:
        server.run()
    finally:
        server.close()
        storage.close()  # S3: its cache of model versions, and its request counts
        log.info("stopped")


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(0)  # waitress closes its sockets on SystemExit


def _configure_logging() -> None:
    """A server logs what it does (INFO) with times; TensorFlow must not chatter."""
    from mlbackend.tf import quiet_tensorflow

    quiet_tensorflow()  # before any training imports TensorFlow
    formatter = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s")
    mlbackend_logger = logging.getLogger("mlbackend")
    for handler in mlbackend_logger.handlers:
        if getattr(handler, "_mlbackend", False):  # cli's stderr handler
            handler.setLevel(logging.INFO)
            handler.setFormatter(formatter)
    # The access log has its own handler and does not propagate, so that an
    # evaluation's info.log (a handler on "mlbackend") never collects it.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s access: %(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    waitress_log = logging.getLogger("waitress")
    waitress_log.addHandler(logging.StreamHandler(sys.stderr))
    waitress_log.handlers[-1].setFormatter(formatter)
    waitress_log.handlers[-1].addFilter(gate.QuietFilter())  # a line per queued request
    waitress_log.setLevel(logging.WARNING)
    waitress_log.propagate = False


def open_storage(config: ServerConfig) -> Storage:
    """The storage the configuration names (`ServerConfig.storage_kind`)."""
    if config.storage_kind == "s3":
        from mlbackend.server.s3 import S3Storage  # boto3: only with a bucket

        assert config.s3_bucket is not None
        return S3Storage(
            config.s3_bucket, endpoint_url=config.s3_endpoint_url, limits=config.s3_limits()
        )
    assert config.storage_dir is not None
    return LocalStorage(config.storage_dir)
