"""The door of the HTTP server: what a client gets before it is authenticated.

Waitress reads a whole request body (up to the upload limit, spooled to a
temporary file) before the application runs, so a check in the application
comes too late: anyone who can reach the port could make the server write
512 MiB per request. This module plugs into waitress' connection handling:

- Credentials are checked as soon as a request's headers are in, before a
  byte of its body is read. A request without valid credentials (except
  GET /version) is answered 401 and its connection closed, body unread.
- Credentials already verified (`Users.is_verified`, a keyed-HMAC lookup)
  pass at once. Others wait, their connection not read meanwhile (TCP flow
  control holds the client), for one verifier thread: one slow (PBKDF2)
  check at a time whatever the number of clients, never in a thread that
  serves requests, so a flood of failed logins costs at most one core and
  does not slow an authenticated client. When more than `MAX_WAITING`
  requests wait, the next ones are answered 401 at once, unchecked. Every
  check costs the same, known user or not (see `mlbackend.server.auth`).
- A request's headers must be complete within `HEADER_SECONDS` of its
  first byte, and one client address may hold at most
  `MAX_CONNECTIONS_PER_CLIENT` connections (not applied to the trusted
  proxy, through which every client comes), so a few slow or idle
  connections cannot take every connection of the server.
"""

from __future__ import annotations

import collections
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.utilities import Error

from mlbackend.server.auth import Users, basic_credentials

log = logging.getLogger("mlbackend.server")
access_log = logging.getLogger("mlbackend.access")

HEADER_SECONDS = 20
MAX_CONNECTIONS_PER_CLIENT = 32
MAX_WAITING = 64
#: Paths answered without credentials (as in `mlbackend.server.app`).
OPEN_PATHS = ("/version",)


_UNSAFE = re.compile(r'[\x00-\x20\x7f-\x9f"\\\u2028\u2029]')


def log_safe(value: str | None, limit: int = 512) -> str:
    """A client-controlled value for one access-log line: control characters
    (a `%0A` in the path would start a forged line), spaces, quotes and
    backslashes escaped as \\xNN, and the whole cut at `limit` characters."""
    if not value:
        return "-"
    text = _UNSAFE.sub(
        lambda m: (
            f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}"
        ),
        value[:limit],
    )
    return text + ("..." if len(value) > limit else "")


_CREDENTIALS_IN_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s\"']*@")


def masked(text: str) -> str:
    """`text` with the user and password of every URL in it
    (`scheme://user:password@host`) written as `***`: for log lines that may
    show a store's endpoint (an S3 endpoint URL may carry credentials)."""
    return _CREDENTIALS_IN_URL.sub(r"\1***@", text)


def log_refusal(channel: GatedChannel, parser: GatedParser) -> None:
    """The access-log line of a request refused here (the application,
    which writes the others, never sees it)."""
    access_log.info(
        '%s - "%s %s" 401 0 -',
        log_safe(channel.client),
        log_safe(parser.command),
        log_safe(parser.path),
    )


class Unauthorized(Error):
    code = 401
    reason = "Unauthorized"

    def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
        body = b"Incorrect user and/or password.\n"
        return (
            f"{self.code} {self.reason}",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("WWW-Authenticate", 'Basic realm="mlbackend"'),
            ],
            body,
        )


class Verifier:
    """The one thread that runs slow credential checks, in arrival order."""

    def __init__(self, users: Users) -> None:
        self.users = users
        self._queue: queue.Queue[tuple[str, str, Callable[[bool], None]]] = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="mlbackend-auth", daemon=True).start()

    def submit(self, user: str, password: str, done: Callable[[bool], None]) -> bool:
        """Queue a check; False (refuse at once) when too many wait already."""
        with self._lock:
            if self._waiting >= MAX_WAITING:
                return False
            self._waiting += 1
        self._queue.put((user, password, done))
        return True

    def _run(self) -> None:
        while True:
            user, password, done = self._queue.get()
            try:
                ok = self.users.check(user, password)
            except Exception:  # the thread must go on
                log.exception("checking credentials failed")
                ok = False
            with self._lock:
                self._waiting -= 1
            done(ok)


class GatedParser(HTTPRequestParser):
    """waitress' request parser, stopped after the headers until the
    credentials are known to be good."""

    # waitress' own attributes, which its code does not annotate.
    error: Any
    expect_continue: bool

    def __init__(self, adj: Any, channel: GatedChannel) -> None:
        super().__init__(adj)
        self.channel = channel
        self.started = time.monotonic()
        self.gated = False
        #: Bytes received while the credentials are being checked (None: not waiting).
        self.held: bytes | None = None
        self.completed_after_check = False
        self.wants_continue = False

    def received(self, data: bytes) -> int:
        if self.held is not None:
            self.held += data
            return len(data)
        n: int = super().received(data)
        if self.headers_finished and not self.gated:
            self.gated = True
            if self.error is None:
                verdict = self.channel.gate.verdict(self)
                if verdict != "pass":
                    # No "100 Continue" (curl asks for it before a large body)
                    # until the credentials are known good.
                    self.wants_continue, self.expect_continue = self.expect_continue, False
                if verdict == "refuse":
                    log_refusal(self.channel, self)
                    self.error = Unauthorized("")
                    self.completed = True
                    return len(data)  # the body is never read: the connection closes
                if verdict == "wait":
                    self.completed_after_check = self.completed
                    self.completed = False
                    self.held = data[n:]
                    return len(data)
        return n


class Gate:
    """Settings and state shared by every connection of one server."""

    def __init__(self, users: Users, trusted_proxy: str | None = None) -> None:
        self.users = users
        self.verifier = Verifier(users)
        self.trusted_proxy = trusted_proxy
        self.clients: collections.Counter[str] = collections.Counter()

    def verdict(self, parser: GatedParser) -> str:
        """'pass', 'refuse' or 'wait' (checked by the verifier, then `resume`)."""
        if parser.path.rstrip("/") in OPEN_PATHS and parser.command == "GET":
            return "pass"
        credentials = basic_credentials(parser.headers.get("AUTHORIZATION"))
        if credentials is None:
            return "refuse"
        if self.users.is_verified(*credentials):
            return "pass"
        channel = parser.channel

        def done(ok: bool) -> None:  # in the verifier thread: hand over to the main loop
            channel.server.trigger.pull_trigger(lambda: channel.resume(parser, ok))

        return "wait" if self.verifier.submit(*credentials, done) else "refuse"


class GatedChannel(HTTPChannel):
    """waitress' connection, with the gate's checks. Its methods run in
    waitress' main loop thread, like the parser's."""

    gate: Gate  # set on the subclass made for each server (see `channel_class`)
    request: Any  # waitress': the request being parsed

    def __init__(self, server: Any, sock: Any, addr: Any, adj: Any, map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map=map)
        self.parser_class = lambda adj: GatedParser(adj, self)
        self.client = str(addr[0]) if isinstance(addr, tuple) and addr else ""
        self.gate.clients[self.client] += 1
        if (
            self.gate.clients[self.client] > MAX_CONNECTIONS_PER_CLIENT
            and self.client != self.gate.trusted_proxy
        ):
            log.warning(
                "%s has more than %d connections open; closing the newest",
                self.client,
                MAX_CONNECTIONS_PER_CLIENT,
            )
            self.will_close = True

    def del_channel(self, map: Any = None) -> None:
        if getattr(self, "client", None) is not None:
            self.gate.clients[self.client] -= 1
            if self.gate.clients[self.client] <= 0:
                del self.gate.clients[self.client]
            self.client = None  # type: ignore[assignment]
        super().del_channel(map)

    def readable(self) -> bool:
        if self.waiting_for_check():
            return False
        return bool(super().readable())

    def waiting_for_check(self) -> bool:
        request = self.request
        return isinstance(request, GatedParser) and request.held is not None

    def headers_overdue(self, now: float) -> bool:
        request = self.request
        return (
            isinstance(request, GatedParser)
            and not request.headers_finished
            and now - request.started > HEADER_SECONDS
        )

    def resume(self, parser: GatedParser, ok: bool) -> None:
        """The verifier's answer for `parser`; in the main loop thread."""
        if self.request is not parser or not self.connected or parser.held is None:
            return  # the connection closed meanwhile
        held, parser.held = parser.held, None
        if ok:
            parser.completed = parser.completed_after_check
            if parser.wants_continue and not parser.completed and not self.requests:
                self.send_continue()
        else:
            log_refusal(self, parser)
            parser.error = Unauthorized("")
            parser.completed = True
            held = b""
        if parser.completed:
            with self.requests_lock:
                self.requests.append(parser)
                if len(self.requests) == 1:
                    self.server.add_task(self)
                self.request = None
        if held:
            self.received(held)
        self.server.pull_trigger()  # the loop re-reads readable()/writable()


def channel_class(gate: Gate) -> type[GatedChannel]:
    """A channel class bound to this server's gate."""
    return type("MLBackendChannel", (GatedChannel,), {"gate": gate})


def install(server: Any, gate: Gate) -> None:
    """Make a waitress server use the gate for its new connections, and
    close connections whose headers are overdue at each maintenance pass."""
    server.channel_class = channel_class(gate)
    maintenance = server.maintenance

    def gated_maintenance(now: float) -> None:
        maintenance(now)
        clock = time.monotonic()
        for channel in list(server.active_channels.values()):
            if isinstance(channel, GatedChannel) and channel.headers_overdue(clock):
                channel.will_close = True

    server.maintenance = gated_maintenance
