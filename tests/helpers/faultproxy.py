"""A proxy between `mlbackend serve` and an S3 endpoint that injects faults.

    python tests/helpers/faultproxy.py --upstream http://127.0.0.1:PORT --port N --control-port M

It forwards each S3 request on its own connection to the upstream (moto's
server) and answers the client on a kept-alive connection, as S3 does; the
tests switch what it does at run time over the control port:

    POST /rules  {"default": MODE, "rules": [{"match": REGEX, "mode": MODE,
                  "times": N, "then": MODE}, ...]}
    GET  /log    what it did: [{"request": "PUT /bucket/key", "mode": MODE,
                  "status": upstream's status or null}, ...]

A request (`METHOD /path?query`) takes the mode of the first rule whose
regular expression it matches (`re.search`), else the default mode. A rule
with `times` is used that many times and then dropped; `then` is the
default mode after the rule was used (a store that goes away right after
applying a write).

Modes:

- `pass`: forward, answer as the upstream did.
- `hang`: read the request, forward nothing, never answer (until the client
  gives up and closes the connection).
- `refuse` (default mode only): nothing listens on the port any more, and
  every open connection is closed, so a client's next connection is refused.
- `reset`: close the connection without forwarding or answering.
- `503`: answer 503 SlowDown, as S3 does when throttling; nothing forwarded.
- `cut`: forward, then send the upstream's status, headers and half of its
  body, and close the connection.
- `apply-then-close`: forward (the upstream applies a write), then close the
  connection without answering: an answer lost.
- `apply-then-hang`: forward, then never answer: an answer that never comes.

Nothing here runs in the tests' process: it is a real process on loopback,
like moto's server and the replicas.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import select
import socket
import socketserver
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODES = (
    "pass",
    "hang",
    "refuse",
    "reset",
    "503",
    "cut",
    "apply-then-close",
    "apply-then-hang",
)
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class State:
    """The rules, the log and the open client connections; thread-safe."""

    def __init__(self, upstream: str) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.lock = threading.Lock()
        self.default = "pass"
        self.rules: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []
        self.clients: set[socket.socket] = set()
        self.stopping = threading.Event()
        #: Opens and closes the proxy's port (set once it exists).
        self.listener: Listener | None = None

    def set_default(self, mode: str) -> None:
        """The mode of requests no rule matches; `refuse` closes the port."""
        with self.lock:
            self.default = mode
        if self.listener is not None:
            if mode == "refuse":
                self.listener.close()
            else:
                self.listener.open()

    def mode_for(self, request: str) -> tuple[str, dict[str, Any]]:
        """The mode of `request` and its log entry; uses up a rule's `times`."""
        with self.lock:
            mode = self.default
            for rule in self.rules:
                if re.search(rule["match"], request):
                    mode = rule["mode"]
                    if rule.get("times") is not None:
                        rule["times"] -= 1
                        if rule["times"] <= 0:
                            self.rules.remove(rule)
                    then = rule.get("then")
                    break
            else:
                then = None
            entry: dict[str, Any] = {"request": request, "mode": mode, "status": None}
            if then:
                entry["then"] = then
            self.log.append(entry)
            return mode, entry

    def close_clients(self) -> None:
        with self.lock:
            clients = list(self.clients)
        for sock in clients:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ProxyServer

    def setup(self) -> None:
        super().setup()
        with self.server.state.lock:
            self.server.state.clients.add(self.connection)

    def finish(self) -> None:
        with self.server.state.lock:
            self.server.state.clients.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except OSError:  # the client went away, or the mode closed the connection
            self.close_connection = True

    def _body(self) -> bytes:
        """The request body as sent (Content-Length, or chunked framing kept raw)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = b""
            while True:
                line = self.rfile.readline()
                raw += line
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, up to the empty line
                        trailer = self.rfile.readline()
                        raw += trailer
                        if trailer in (b"\r\n", b"\n", b""):
                            return raw
                raw += self.rfile.read(size + 2)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _any(self) -> None:
        body = self._body()
        mode, entry = self.server.state.mode_for(f"{self.command} {self.path}")
        try:
            self._answer(mode, entry, body)
        finally:
            if entry.get("then"):  # the store changes once this request is done
                self.server.state.set_default(entry["then"])

    def _answer(self, mode: str, entry: dict[str, Any], body: bytes) -> None:
        if mode in ("reset", "refuse"):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode == "hang":
            self._hang()
            return
        if mode == "503":
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.end_headers()
            self.wfile.write(SLOW_DOWN)
            return
        status, reason, headers, data = self._forward(body)
        entry["status"] = status
        if mode == "apply-then-close":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode == "apply-then-hang":
            self._hang()
            return
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        no_body = self.command == "HEAD" or status in (204, 304)
        length = dict((k.lower(), v) for k, v in headers).get("content-length")
        self.send_header("Content-Length", length if no_body and length else str(len(data)))
        self.end_headers()
        if no_body:
            return
        if mode == "cut":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        with socket.create_connection(self.server.state.upstream, timeout=60) as up:
            head = [f"{self.command} {self.path} HTTP/1.1"]
            for name, value in self.headers.items():
                if name.lower() != "connection":
                    head.append(f"{name}: {value}")
            head.append("Connection: close")
            up.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            response = http.client.HTTPResponse(up, method=self.command)
            response.begin()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data

    def _hang(self) -> None:
        """Answer nothing until the client closes the connection (or the proxy stops)."""
        self.close_connection = True
        while not self.server.state.stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.2)
            if readable:
                try:
                    if not self.connection.recv(4096):
                        return
                except OSError:
                    return


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: State) -> None:
        self.state = state
        super().__init__(address, Handler)


class Listener:
    """The proxy's port: served in a thread, closed while the default mode is `refuse`."""

    def __init__(self, host: str, port: int, state: State) -> None:
        self.address = (host, port)
        self.state = state
        self.server: ProxyServer | None = None
        self.lock = threading.Lock()

    def open(self) -> None:
        with self.lock:
            if self.server is None:
                self.server = ProxyServer(self.address, self.state)
                threading.Thread(
                    target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
                ).start()

    def close(self) -> None:
        """Stop listening, then close every connection: a client that tries
        again connects anew, and is refused (never "sent, and no answer")."""
        with self.lock:
            if self.server is not None:
                self.server.shutdown()
                self.server.server_close()
                self.server = None
        self.state.close_clients()


class Control(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ControlServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, obj: Any, status: int = 200) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/log":
            with self.server.state.lock:
                self._answer(list(self.server.state.log))
        else:
            self._answer({"error": "no such path"}, 404)

    def do_POST(self) -> None:
        if self.path != "/rules":
            self._answer({"error": "no such path"}, 404)
            return
        spec = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        modes = [spec.get("default", "pass")] + [r["mode"] for r in spec.get("rules", [])]
        modes += [r["then"] for r in spec.get("rules", []) if r.get("then")]
        if any(m not in MODES for m in modes):
            self._answer({"error": f"modes are {MODES}"}, 400)
            return
        state = self.server.state
        with state.lock:
            state.rules = [dict(r) for r in spec.get("rules", [])]
        state.set_default(spec.get("default", "pass"))
        self._answer({"ok": True})


class ControlServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: State) -> None:
        self.state = state
        super().__init__(address, Control)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="the S3 endpoint, http://HOST:PORT")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True, help="the proxy's port")
    ap.add_argument("--control-port", type=int, required=True, help="where the tests switch it")
    args = ap.parse_args()
    state = State(args.upstream)
    state.listener = Listener(args.host, args.port, state)
    state.listener.open()
    control = ControlServer((args.host, args.control_port), state)
    try:
        control.serve_forever()
    finally:
        state.stopping.set()


if __name__ == "__main__":
    main()
