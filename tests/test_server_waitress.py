"""What mlbackend/server/gate.py relies on in waitress, pinned.

The gate subclasses waitress' channel and parser and replaces two methods
of one server (`readable`, `handle_accept`) and wraps a third
(`maintenance`): internals, not waitress' API. These tests run a real
waitress server in this process, drive its main loop by hand, and check
the attributes and behaviours the gate uses, so that an upgrade of waitress
that changes them fails here first. When the pinned version changes:
read gate.py against the new waitress, run these, then update `PINNED`.
"""

from __future__ import annotations

import gc
import importlib.metadata
import logging
import os
import resource
import socket
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import waitress.server
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser

from mlbackend.server import gate
from mlbackend.server.auth import Users, parse_users

PINNED = "3.0.2"
AUTH = "Authorization: Basic bW9vZGxlOnNlY3JldA==\r\n"  # moodle:secret


def test_waitress_is_the_version_the_gate_was_written_for():
    assert importlib.metadata.version("waitress") == PINNED, (
        "waitress changed: check mlbackend/server/gate.py against it (this file's "
        "tests), then update PINNED"
    )


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture
def served() -> Iterator[Any]:
    """A waitress server on a free port with the gate installed (at most 4
    connections), its loop not running: `step` runs passes of it."""
    server = waitress.server.create_server(
        app, host="127.0.0.1", port=0, threads=1, asyncore_use_poll=True
    )
    gate.install(server, gate.Gate(Users(parse_users("moodle:secret"))), 4)
    yield server
    for channel in list(server.active_channels.values()):
        channel.handle_close()
    server.close()
    server.task_dispatcher.shutdown()


def step(server: Any, passes: int = 10) -> None:
    for _ in range(passes):
        wasyncore.loop(timeout=0.02, map=server._map, use_poll=True, count=1)


def step_until(server: Any, condition: Any, most: int = 2000) -> None:
    """Passes of the loop until `condition()` (a bound on passes, not on time)."""
    for _ in range(most):
        if condition():
            return
        step(server, 1)
    raise AssertionError(f"not after {most} passes")


def client(server: Any, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.effective_port), timeout=10)
    if data:
        sock.sendall(data)
    return sock


def deleted_files() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += "(deleted)" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return count


def test_the_attributes_the_gate_uses(served):
    server = served
    for name in ("accept", "set_socket_options", "fix_addr", "maintenance", "close"):
        assert callable(getattr(server, name)), name
    assert isinstance(server.active_channels, dict) and isinstance(server._map, dict)
    assert server.adj.threads == 1 and server.adj.connection_limit > 0
    assert callable(server.trigger.pull_trigger) and server.socket is not None
    assert issubclass(server.channel_class, gate.GatedChannel)
    for name in ("received", "handle_close", "del_channel", "send_continue", "service"):
        assert callable(getattr(HTTPChannel, name)), name
    for name in ("will_close", "close_when_flushed", "total_outbufs_len", "last_activity"):
        assert hasattr(HTTPChannel, name), name
    assert HTTPChannel.parser_class is HTTPRequestParser
    for name in ("headers_finished", "completed", "error", "expect_continue", "chunked"):
        assert hasattr(HTTPRequestParser, name), name
    assert callable(HTTPRequestParser.close) and HTTPRequestParser.content_length == 0
    # Door.readable closes connections while waitress collects what to
    # poll; that is safe because the server's entry comes first.
    socks = [client(server) for _ in range(2)]
    step(server)
    entries = list(server._map.values())
    assert entries.index(server) < min(entries.index(c) for c in server.active_channels.values())
    for sock in socks:
        sock.close()


def test_a_request_is_parsed_by_the_gate_and_released_with_its_connection(served):
    """waitress makes a parser per request with `parser_class(adj)`, spools a
    body over 512 KiB to a deleted temporary file, and on the client's
    end of file closes the channel through `del_channel`; without the
    garbage collector, the file and the channel are gone then."""
    server = served
    before = deleted_files()
    gc.disable()
    try:
        head = (f"POST /x HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: {4 << 20}\r\n\r\n").encode()
        sock = client(server, head + bytes(1 << 20))
        step_until(server, lambda: deleted_files() == before + 1)  # spooled
        (channel,) = server.active_channels.values()
        assert isinstance(channel.request, gate.GatedParser)
        assert channel.request.channel is channel
        ref = weakref.ref(channel)
        del channel
        sock.close()
        step_until(server, lambda: not server.active_channels)  # what was sent, then the end
        assert deleted_files() == before
        assert ref() is None, gc.get_referrers(ref())
    finally:
        gc.enable()


def test_room_is_made_without_handing_old_events_to_new_connections(served):
    """At the limit (4), a waiting client gets in: the oldest idle connection
    is closed before the poll, and the new one, which gets its descriptor
    number, is served (not closed by the old one's POLLNVAL)."""
    server = served
    idle = [client(server) for _ in range(4)]
    step(server)
    assert len(server.active_channels) == 4
    new = client(server, b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    step(server, 40)  # the answer comes from the worker thread
    new.settimeout(10)
    assert new.recv(100).startswith(b"HTTP/1.1 200")
    idle[0].settimeout(10)
    assert idle[0].recv(1) == b""
    for sock in idle + [new]:
        sock.close()


def test_running_out_of_descriptors_at_accept_is_handled(served, caplog):
    """accept() raising EMFILE: one warning, a connection closed to free a
    descriptor, and the waiting client accepted at the next pass (waitress
    logs a traceback and retries at once, for ever)."""
    server = served
    idle = [client(server) for _ in range(2)]
    step(server)
    waiting = client(server)  # in the listen queue
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    caplog.set_level(logging.WARNING, logger="mlbackend.server")
    lowest_free = os.dup(0)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor
    try:
        door_accept = server.handle_accept
        door_accept()  # EMFILE
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    warnings = [r.getMessage() for r in caplog.records if "file descriptors" in r.getMessage()]
    assert warnings and all("Traceback" not in w for w in warnings), warnings
    assert len(server.active_channels) == 1  # the oldest closed to free a descriptor
    step(server)
    assert len(server.active_channels) == 2  # and the waiting client accepted
    for sock in idle + [waiting]:
        sock.close()
