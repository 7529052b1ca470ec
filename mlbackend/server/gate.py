"""The door of the HTTP server: what a client gets before it is authenticated.

Waitress reads a whole request body (up to the upload limit, spooled to a
temporary file) before the application runs, so a check in the application
comes too late: anyone who can reach the port could make the server write
512 MiB per request. This module plugs into waitress' connection handling:

- Credentials are checked as soon as a request's headers are in, before a
  byte of its body is read. A request without valid credentials is
  answered 401 and its connection closed, body unread. The one request
  answered without credentials, GET /version, may have a body of at most
  `OPEN_BODY_BYTES` (it has none): a larger or chunked one is answered 413,
  body unread. So nobody without a password makes the server read or store
  more than a few KiB.
- Credentials already verified (`Users.is_verified`, a keyed-HMAC lookup)
  pass at once. Others wait, their connection not read meanwhile (TCP flow
  control holds the client), for one verifier thread: one slow (PBKDF2)
  check at a time whatever the number of clients, never in a thread that
  serves requests, so a flood of failed logins costs at most one core and
  does not slow an authenticated client. When more than `MAX_WAITING`
  requests wait, the next ones are answered 401 at once, unchecked. Every
  check costs the same, known user or not (see `mlbackend.server.auth`).
- A request's headers must be complete within `Gate.header_seconds`
  (`mlbackend serve --header-timeout`, 20 s by default) of its first
  byte, and one client address may hold at most
  `MAX_CONNECTIONS_PER_CLIENT` connections (not applied to the trusted
  proxy, through which every client comes), so a few slow or idle
  connections cannot take every connection of the server.
- When the server holds its limit of connections, a new client still gets
  in: the oldest connections without a request in progress (headers
  unfinished, nothing sent, or idle between requests) are closed to make
  room (`Door`). Many addresses cannot keep Moodle out by holding
  half-open connections.
- At the process's file descriptor limit (EMFILE on accept), the server
  closes such connections to free descriptors, lowers its connection limit
  below the point where that happened (so that requests in progress keep
  descriptors to open their files), or pauses accepting for a moment when
  there is nothing to close; and says so once a minute, never a traceback
  per attempt.
- A connection that ends for any reason releases the request it was
  receiving at once, its spooled body with it: a parser and its channel
  do not refer to each other (a weak reference), so nothing waits for the
  garbage collector.

Every use of waitress' internals (its channel, parser and server attributes
and methods) is in this module, for waitress 3.0.2 (the pinned version);
tests/test_server_waitress.py pins what it relies on, so that an upgrade
that changes them fails there first. Nothing of waitress is patched
globally: `install` sets up one server.
"""

from __future__ import annotations

import collections
import errno
import functools
import heapq
import logging
import queue
import re
import select
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.utilities import Error

from mlbackend.server.auth import Users, basic_credentials
from mlbackend.server.config import ServerConfig

log = logging.getLogger("mlbackend.server")
access_log = logging.getLogger("mlbackend.access")

#: Largest request line and headers (Moodle's are under 1 KiB); waitress'
#: default, 256 KiB, held in memory per connection, would let 1,000
#: unauthenticated connections take 256 MB.
MAX_HEADER_BYTES = 32 << 10
MAX_CONNECTIONS_PER_CLIENT = 32
MAX_WAITING = 64
#: Paths answered without credentials (as in `mlbackend.server.app`).
OPEN_PATHS = ("/version",)
#: Most body bytes a request answered without credentials may declare.
OPEN_BODY_BYTES = 4 << 10
#: Seconds between two log lines about one kind of trouble (`QuietLog`).
LOG_INTERVAL = 60.0
#: Seconds the server stops accepting when it is out of descriptors and
#: no connection can be closed to free one.
ACCEPT_PAUSE = 0.5
#: Fewest connections the server keeps accepting, whatever the limits.
MIN_CONNECTIONS = 16
#: Connections accepted in one pass of the main loop (waitress takes one):
#: a pass over 1,000 connections takes milliseconds, and a client behind
#: hundreds of others in the listen queue would wait seconds.
ACCEPT_BATCH = 32
#: Room made at once when the limit is reached and clients wait (one scan of
#: the connections each time).
EVICT_BATCH = 8
#: Descriptors a worker thread may need for a request (its upload, the
#: spooled copy, the model, the answer, S3): kept free for each when the
#: limit is lowered after running out (and counted at start, see wsgi).
DESCRIPTORS_PER_WORKER = 8
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


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


def log_refusal(channel: GatedChannel, parser: GatedParser, code: int = 401) -> None:
    """The access-log line of a request refused here (the application,
    which writes the others, never sees it)."""
    access_log.info(
        '%s - "%s %s" %d 0 -',
        log_safe(channel.client),
        log_safe(parser.command),
        log_safe(parser.path),
        code,
    )


class QuietLog:
    """Warnings about a kind of trouble that may repeat thousands of times a
    second (running out of descriptors, a full server): the first at once,
    then at most one line per `LOG_INTERVAL`, saying how many there were."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}
        self._count: collections.Counter[str] = collections.Counter()

    def warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        self._count[kind] += 1
        if now < self._next.get(kind, 0.0):
            return
        count, self._count[kind] = self._count[kind], 0
        self._next[kind] = now + self.interval
        if count > 1:
            message += f" ({count} times in the last {self.interval:.0f} s)"
        log.warning(message, *args)


class QuietFilter(logging.Filter):
    """The same for another library's log records (waitress writes "Task
    queue depth is N" for every request queued while the workers are busy):
    one record per message per `LOG_INTERVAL`, the next saying how many were
    left out."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        super().__init__()
        self.interval = interval
        self._next: dict[tuple[str, str], float] = {}
        self._left_out: collections.Counter[tuple[str, str]] = collections.Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        if now < self._next.get(key, 0.0):
            self._left_out[key] += 1
            return False
        self._next[key] = now + self.interval
        left_out, self._left_out[key] = self._left_out[key], 0
        if left_out:
            record.msg = f"{record.msg} (and {left_out} more like it in the last "
            record.msg += f"{self.interval:.0f} s)"
        return True


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


class OpenBodyRefused(Error):
    """A request answered without credentials came with a body: refused unread."""

    code = 413
    reason = "Request Entity Too Large"

    def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
        body = (
            f"A request without credentials may not send a body (at most "
            f"{OPEN_BODY_BYTES} bytes, and not chunked).\n"
        ).encode()
        return (
            f"{self.code} {self.reason}",
            [("Content-Type", "text/plain; charset=utf-8")],
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
    chunked: bool
    content_length: int

    def __init__(self, adj: Any, channel: weakref.ref[GatedChannel]) -> None:
        super().__init__(adj)
        # A weak reference: the channel holds its parser, and a cycle would
        # keep both (and a spooled body's temporary file) until the garbage
        # collector runs, minutes later under load.
        self._channel = channel
        self.started = time.monotonic()
        self.gated = False
        #: Bytes received while the credentials are being checked (None: not waiting).
        self.held: bytes | None = None
        self.completed_after_check = False
        self.wants_continue = False

    @property
    def channel(self) -> GatedChannel | None:
        return self._channel()

    def received(self, data: bytes) -> int:
        if self.held is not None:
            self.held += data
            return len(data)
        n: int = super().received(data)
        channel = self.channel
        if self.headers_finished and not self.gated and channel is not None:
            self.gated = True
            if self.error is None:
                verdict = channel.gate.verdict(self, channel)
                if verdict not in ("pass", "open"):
                    # No "100 Continue" (curl asks for it before a large body)
                    # until the credentials are known good.
                    self.wants_continue, self.expect_continue = self.expect_continue, False
                if verdict == "open" and (self.chunked or self.content_length > OPEN_BODY_BYTES):
                    log_refusal(channel, self, OpenBodyRefused.code)
                    self.error = OpenBodyRefused("")
                    self.completed = True
                    return len(data)  # the body is never read: the connection closes
                if verdict == "refuse":
                    log_refusal(channel, self)
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

    def __init__(
        self,
        users: Users,
        trusted_proxy: str | None = None,
        header_seconds: float = ServerConfig.header_timeout,
    ) -> None:
        self.users = users
        self.header_seconds = header_seconds
        self.verifier = Verifier(users)
        self.trusted_proxy = trusted_proxy
        self.clients: collections.Counter[str] = collections.Counter()
        self.quiet = QuietLog()

    def verdict(self, parser: GatedParser, channel: GatedChannel) -> str:
        """'open' (answered without credentials), 'pass', 'refuse' or 'wait'
        (checked by the verifier, then `GatedChannel.resume`)."""
        if parser.path.rstrip("/") in OPEN_PATHS and parser.command == "GET":
            return "open"
        credentials = basic_credentials(parser.headers.get("AUTHORIZATION"))
        if credentials is None:
            return "refuse"
        if self.users.is_verified(*credentials):
            return "pass"

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
        self.accepted = time.monotonic()
        self.parser_class = functools.partial(GatedParser, channel=weakref.ref(self))
        self.client = str(addr[0]) if isinstance(addr, tuple) and addr else ""
        self.gate.clients[self.client] += 1
        if (
            self.gate.clients[self.client] > MAX_CONNECTIONS_PER_CLIENT
            and self.client != self.gate.trusted_proxy
        ):
            self.gate.quiet.warn(
                "per-client",
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
        # The request being received (the client left mid-body, or the
        # connection was closed to make room) goes now, with its spooled
        # body's temporary file: waitress leaves it to the garbage collector.
        request, self.request = self.request, None
        if request is not None:
            request.close()
        super().del_channel(map)

    def handle_error(self) -> None:
        """An exception in the main loop while serving this connection: one
        line (waitress writes a compact traceback for each), then close."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_DESCRIPTORS:
            self.gate.quiet.warn(
                "descriptors-channel",
                "out of file descriptors while receiving a request; closed its connection",
            )
        else:
            where = traceback.extract_tb(sys.exc_info()[2])[-1:] if exc else []
            log.error(
                "closed the connection of %s after an unexpected error: %s: %s%s",
                log_safe(getattr(self, "client", None)),
                type(exc).__name__,
                log_safe(str(exc), 200),
                f" ({where[0].filename}:{where[0].lineno})" if where else "",
            )
        self.handle_close()

    def readable(self) -> bool:
        if self.socket is None:
            # Closed to make room while the main loop collected what to
            # poll (`Door.readable`): its descriptor number may go to a new
            # connection in this pass, which must not get its events.
            return False
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
            and now - request.started > self.gate.header_seconds
        )

    def may_make_room(self) -> bool:
        """Whether this connection may be closed to make room: it has no
        request in progress (headers unfinished, or nothing sent, or idle
        between requests with its answers sent), and is not closing anyway."""
        if self.will_close or self.close_when_flushed or self.requests:
            return False
        request = self.request
        if request is None:
            return not self.total_outbufs_len  # else an answer is on its way
        return isinstance(request, GatedParser) and not request.headers_finished

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


class Door:
    """How one waitress server takes new connections: its `readable` (may
    it accept now?) and `handle_accept`, installed on that server.

    `limit` connections at most; when they are all taken and a client
    waits in the listen queue, the oldest connections without a request in
    progress are closed to make room, so a new client (Moodle) always gets
    in. Out of descriptors, the same, and the limit is
    lowered below the number of connections open then, keeping descriptors
    for the requests being served; with nothing to close, accepting pauses
    for `ACCEPT_PAUSE` s.

    A connection is closed at once only where no connection is accepted
    after it in the same pass of the main loop with its old events still
    to come: a new socket gets the closed one's descriptor number, and
    waitress would hand it the old one's events (POLLNVAL: closed). So
    room is made before the poll (in `readable`, called while waitress
    collects what to poll: the server's entry comes before every
    connection's, and a closed connection asks for nothing), or when
    accepting stops for the pass (out of descriptors).
    """

    def __init__(self, server: Any, gate: Gate, limit: int) -> None:
        self.server = server
        self.gate = gate
        self.limit = limit
        self.paused_until = 0.0
        self._waitress_readable = server.readable
        self._listening = select.poll()
        self._listening.register(server.socket, select.POLLIN)

    def readable(self) -> bool:
        """waitress' (which runs the maintenance and says whether the server
        accepts at all), then the limit: before the main loop polls, room
        is made for the clients waiting to be accepted."""
        if not self._waitress_readable():
            return False
        if time.monotonic() < self.paused_until:
            return False
        open_now = len(self.server.active_channels)
        room = max(1, min(EVICT_BATCH, self.limit // 8))  # made at once, for the next ones
        if open_now + room > self.limit and self._listening.poll(0):
            self.make_room(open_now + room - self.limit)
            if len(self.server.active_channels) >= self.limit:
                self.gate.quiet.warn(
                    "full",
                    "the server holds its limit of %d connections, all of them with a "
                    "request in progress; new connections wait until one ends",
                    self.limit,
                )
                return False
        return True

    def make_room(self, count: int) -> int:
        """Close, at once, the `count` oldest connections without a request
        in progress; returns how many. See the class'
        note on when."""
        # Oldest first: a client just accepted (Moodle's, whose request is on
        # its way) is the last to go, whatever the others sent meanwhile.
        waiting = [
            (channel.accepted, id(channel), channel)
            for channel in list(self.server.active_channels.values())
            if isinstance(channel, GatedChannel) and channel.may_make_room()
        ]
        victims = heapq.nsmallest(count, waiting)
        for _, _, channel in victims:
            channel.handle_close()
        if victims:
            self.gate.quiet.warn(
                "evicted",
                "the server holds %d connections (its limit is %d): closed the %d oldest "
                "without a request in progress, to let new clients in",
                len(self.server.active_channels),
                self.limit,
                len(victims),
            )
        return len(victims)

    def handle_accept(self) -> None:
        """waitress 3.0.2's `BaseWSGIServer.handle_accept`, for up to
        `ACCEPT_BATCH` waiting connections within the limit, with running
        out of descriptors handled (waitress logs a traceback and tries
        again at once, thousands of times a second)."""
        server = self.server
        for _ in range(min(ACCEPT_BATCH, self.limit - len(server.active_channels))):
            if not self._accept_one(server):
                break

    def _accept_one(self, server: Any) -> bool:
        """Accept one connection; False when there is none, or no descriptor."""
        try:
            pair = server.accept()
        except OSError as exc:
            if exc.errno in _OUT_OF_DESCRIPTORS:
                self.out_of_descriptors()
            else:
                self.gate.quiet.warn("accept", "accepting a connection failed (%s)", exc)
            return False
        if pair is None:
            return False
        conn, addr = pair
        try:
            server.set_socket_options(conn)
            server.channel_class(server, conn, server.fix_addr(addr), server.adj, map=server._map)
        except OSError as exc:  # the client left already, or no descriptor for it
            conn.close()
            if exc.errno in _OUT_OF_DESCRIPTORS:
                self.out_of_descriptors()
                return False
        return True

    def out_of_descriptors(self) -> None:
        """No descriptor for a new connection (accepting stops for this pass)."""
        open_now = len(self.server.active_channels)
        lowered = max(
            MIN_CONNECTIONS,
            open_now - DESCRIPTORS_PER_WORKER * int(self.server.adj.threads) - EVICT_BATCH,
        )
        if lowered < self.limit:
            log.warning(
                "out of file descriptors with %d connections open: the connection limit "
                "is lowered from %d to %d, so that requests keep descriptors for their files",
                open_now,
                self.limit,
                lowered,
            )
            self.limit = lowered
        freed = self.make_room(max(1, open_now - self.limit))
        if not freed:
            self.paused_until = time.monotonic() + ACCEPT_PAUSE
        self.gate.quiet.warn(
            "descriptors",
            "out of file descriptors: %s",
            f"closed {freed} waiting connections"
            if freed
            else f"not accepting connections for {ACCEPT_PAUSE} s",
        )


def install(server: Any, gate: Gate, limit: int) -> Door:
    """Make a waitress server use the gate for its new connections, take at
    most `limit` connections (making room, see `Door`), and close
    connections whose headers are overdue at each maintenance pass."""
    server.channel_class = channel_class(gate)
    maintenance = server.maintenance

    def gated_maintenance(now: float) -> None:
        maintenance(now)
        clock = time.monotonic()
        for channel in list(server.active_channels.values()):
            if isinstance(channel, GatedChannel) and channel.headers_overdue(clock):
                channel.will_close = True

    server.maintenance = gated_maintenance
    door = Door(server, gate, limit)
    server.readable = door.readable
    server.handle_accept = door.handle_accept
    return door
