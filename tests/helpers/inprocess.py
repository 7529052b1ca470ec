"""The server's WSGI application in this process, driven through werkzeug's
test client with the requests Moodle sends: the routes, the storages and
the error answers without a socket or a server process (which
tests/test_server*.py keep for what needs one: the gate, waitress, the
access log, signals).

`App` answers like `helpers.servers.Server` (`post`, `get`, `train`,
`predict`; responses with `status_code`, `json()`, `text`, `content`,
`headers`), so that a test can drive either."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from werkzeug.test import Client, TestResponse

from helpers.servers import PASSWORD, USER
from mlbackend.server.auth import Users, parse_users
from mlbackend.server.config import ServerConfig
from mlbackend.server.storage import Storage
from mlbackend.server.wsgi import build_app


@dataclass
class Answer:
    """A test client's response, read as `requests` reads one."""

    response: TestResponse

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def text(self) -> str:
        return self.response.get_data(as_text=True)

    @property
    def content(self) -> bytes:
        return self.response.get_data()

    @property
    def headers(self) -> Any:
        return self.response.headers

    def json(self) -> Any:
        return self.response.get_json(force=True)


def basic(auth: tuple[str, str]) -> dict[str, str]:
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@dataclass
class App:
    """One server's application in process: `build_app` on `storage`."""

    storage: Storage
    config: ServerConfig = field(default_factory=ServerConfig)
    users: str = f"{USER}:{PASSWORD}"
    auth: tuple[str, str] = (USER, PASSWORD)

    def __post_init__(self) -> None:
        self.app = build_app(self.config, self.storage, Users(parse_users(self.users)))

    def request(self, method: str, endpoint: str, auth: Any = "default", **kwargs: Any) -> Answer:
        """A request on a new client (a request is one connection, as Moodle's curl)."""
        auth = self.auth if auth == "default" else auth
        headers = {**(basic(auth) if auth else {}), **kwargs.pop("headers", {})}
        client = Client(self.app)
        return Answer(client.open(f"/{endpoint}", method=method, headers=headers, **kwargs))

    def post(
        self,
        endpoint: str,
        data: Mapping[str, Any],
        files: Mapping[str, Any] | None = None,
        auth: Any = "default",
    ) -> Answer:
        """`files` as `requests` takes them: an open file, bytes, or (name, bytes or file)."""
        form: dict[str, Any] = dict(data)
        for name, value in (files or {}).items():
            filename, body = value if isinstance(value, tuple) else (name, value)
            if isinstance(body, bytes):
                body = io.BytesIO(body)
            elif hasattr(body, "read") and not isinstance(body, io.BytesIO):
                body = io.BytesIO(body.read())
            form[name] = (body, filename)
        return self.request("POST", endpoint, auth, data=form)

    def get(
        self, endpoint: str, params: Mapping[str, Any] | None = None, auth: Any = "default"
    ) -> Answer:
        return self.request("GET", endpoint, auth, query_string=dict(params or {}))

    def train(self, uid: str, dirhash: str, path: str) -> dict[str, Any]:
        with open(path, "rb") as f:
            r = self.post("training", {"uniqueid": uid, "dirhash": dirhash}, {"dataset": f})
        assert r.status_code == 200, r.text
        return r.json()

    def predict(self, uid: str, dirhash: str, path: str) -> dict[str, Any]:
        with open(path, "rb") as f:
            r = self.post("prediction", {"uniqueid": uid, "dirhash": dirhash}, {"dataset": f})
        assert r.status_code == 200, r.text
        return r.json()
