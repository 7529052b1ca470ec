"""Who may talk to the server: the users of `MOODLE_MLBACKEND_PYTHON_USERS`.

The variable holds comma-separated `user:password` entries. A password is
one of:

- plain text (the old server's first format; it may not contain `:` or `,`);
- `sha256:SALT:HEXDIGEST` with `HEXDIGEST = sha256(SALT + password)`, as the
  old `gen-passwd` tool wrote them (the old server took any hashlib name in
  place of `sha256`, and so do we, so that no working entry stops working);
- `pbkdf2_sha256:ITERATIONS:SALT:HEXDIGEST`, what `mlbackend passwd` writes:
  PBKDF2-HMAC-SHA256 of the password with SALT (its UTF-8 bytes), 32 bytes.
  A salted, iterated hash, so a leaked environment does not give the
  passwords away as cheaply as one round of SHA-256 does.

An empty password is refused at start-up.

Every comparison goes through `hmac.compare_digest` on digests of equal
length, and a failed check costs the same whether the user exists or not
(see `Users`), so timing tells an attacker neither the password nor which
user names exist.

PBKDF2 is slow on purpose (a good part of a second), which Moodle would pay
on every request. So a successful check is remembered, in this process
only, under an HMAC of the credentials with a key made at start-up (plain
entries are put there at start-up); a wrong password is never remembered.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass

from mlbackend.contract import BackendError, ConfigError, shown
from mlbackend.server.config import PBKDF2_ITERATIONS, USERS_ENV

log = logging.getLogger(__name__)

PBKDF2_SCHEME = "pbkdf2_sha256"
#: Fewer than this is refused when read: it would be no better than sha256.
PBKDF2_MIN_ITERATIONS = 10_000
#: Remembered successful checks of slow entries (credentials, not users).
VERIFIED_CACHE_SIZE = 1024
#: The password of Moodle's CI and moodle-docker (and of the old backend's
#: container image): public, so a server that accepts it is open to anyone.
WELL_KNOWN_PASSWORD = "sshhhh"

HOW_TO_CREATE = (
    f"Set {USERS_ENV} to comma-separated user:password entries, for example "
    f'{USERS_ENV}="$(mlbackend passwd moodle)" (prompts for the password and prints a '
    "salted, iterated hash entry). Moodle's admin settings for the ML server take the "
    "same user name and the plain password."
)


class UsersError(ConfigError):
    """`MOODLE_MLBACKEND_PYTHON_USERS` is missing or malformed."""


@dataclass(frozen=True)
class Credential:
    """One user's stored password: `scheme` is 'plain', a hashlib name, or PBKDF2."""

    scheme: str
    secret: str  # plain password, or the hex digest
    salt: str = ""
    iterations: int = 0

    @property
    def slow(self) -> bool:
        return self.scheme == PBKDF2_SCHEME

    def digest(self, password: str) -> bytes:
        """The bytes to compare with `expected()` for this password."""
        data = password.encode("utf-8")
        if self.scheme == "plain":
            return hashlib.sha256(data).digest()
        if self.scheme == PBKDF2_SCHEME:
            return hashlib.pbkdf2_hmac("sha256", data, self.salt.encode("utf-8"), self.iterations)
        h = hashlib.new(self.scheme)
        h.update(self.salt.encode("utf-8"))
        h.update(data)
        return h.digest()

    def expected(self) -> bytes:
        if self.scheme == "plain":
            return hashlib.sha256(self.secret.encode("utf-8")).digest()
        return bytes.fromhex(self.secret)


_HEX = re.compile(r"^[0-9a-fA-F]+$")


def parse_credential(user: str, text: str, number: int = 1) -> Credential:
    """One entry's password part; raises `UsersError` naming the user and the
    entry's number, and never quoting any part of the password or hash (a
    plain password may look like a malformed hash)."""
    where = f"The password of user {shown(user)} (entry {number} of {USERS_ENV})"
    if ":" not in text:
        return Credential("plain", text)
    parts = text.split(":")
    scheme = parts[0]
    if scheme == PBKDF2_SCHEME:
        if len(parts) != 4 or not parts[1].isdigit() or not _HEX.match(parts[3]):
            raise UsersError(
                f"{where} is not {PBKDF2_SCHEME}:ITERATIONS:SALT:HEXDIGEST. {HOW_TO_CREATE}"
            )
        iterations = int(parts[1])
        if iterations < PBKDF2_MIN_ITERATIONS:
            raise UsersError(
                f"{where} has too few PBKDF2 iterations: at least {PBKDF2_MIN_ITERATIONS} "
                f"are needed. {HOW_TO_CREATE}"
            )
        return Credential(PBKDF2_SCHEME, parts[3].lower(), salt=parts[2], iterations=iterations)
    if scheme in hashlib.algorithms_guaranteed and not scheme.startswith("shake"):
        salt, _, digest = text[len(scheme) + 1 :].partition(":")
        size = hashlib.new(scheme).digest_size
        if not digest or not _HEX.match(digest) or len(digest) != 2 * size:
            raise UsersError(
                f"{where} starts like an old HASH:SALT:HEXDIGEST entry (what gen-passwd "
                f"wrote) but is not one. {HOW_TO_CREATE}"
            )
        return Credential(scheme, digest.lower(), salt=salt)
    raise UsersError(
        f"{where} contains ':', but what comes before it is not a known hash name "
        f"(plain-text passwords may not contain ':' or ','). {HOW_TO_CREATE}"
    )


def parse_users(text: str | None) -> dict[str, Credential]:
    """All users of the variable's value; raises `UsersError` when there are none."""
    users: dict[str, Credential] = {}
    for number, entry in enumerate((text or "").split(","), start=1):
        if not entry.strip():
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user:
            raise UsersError(f"Entry {number} of {USERS_ENV} is not user:password. {HOW_TO_CREATE}")
        if not password:
            raise UsersError(
                f"The password of user {shown(user)} (entry {number} of {USERS_ENV}) is "
                f"empty; a user without a password is refused. {HOW_TO_CREATE}"
            )
        if user in users:
            log.warning(
                "user %s appears twice in %s; the later entry counts", shown(user), USERS_ENV
            )
        users[user] = parse_credential(user, password, number)
    if not users:
        raise UsersError(f"The server has no users, so nobody could use it. {HOW_TO_CREATE}")
    return users


class Users:
    """Checks Basic-auth credentials against the configured users.

    Two paths, and what each costs does not depend on who the user is:

    - `is_verified`: credentials this process has verified before (or a
      plain-text entry, verified at start-up since its password is known)
      are found by a keyed HMAC of user and password in a set: a few
      microseconds, and only for exactly the right user and password.
    - `check`: anything else pays one full check at the cost of the slowest
      configured entry: a known user's own hash padded with PBKDF2 rounds up
      to the most iterations any entry has, an unknown user's a dummy entry
      of that cost. So a wrong password of a known user, and any password of
      an unknown one, take the same time, and timing does not say which
      user names exist. One such check runs at a time (`self._slow`); the
      server makes them in one thread of their own (see `gate`), so failed
      logins cost at most one core and never a request thread.
    """

    def __init__(self, users: dict[str, Credential]) -> None:
        self._users = dict(users)
        self._iterations = max(c.iterations for c in users.values())
        slowest = max(users.values(), key=lambda c: (c.slow, c.iterations))
        size = len(slowest.expected())
        self._dummy = Credential(
            slowest.scheme,
            "" if slowest.scheme == "plain" else "00" * size,
            salt=secrets.token_hex(16),
            iterations=slowest.iterations,
        )
        self._key = secrets.token_bytes(32)
        self._verified: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._permanent = {
            self._token(user, c.secret) for user, c in users.items() if c.scheme == "plain"
        }
        self._lock = threading.Lock()
        self._slow = threading.Lock()

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Users:
        env = os.environ if environ is None else environ
        return cls(parse_users(env.get(USERS_ENV)))

    def __len__(self) -> int:
        return len(self._users)

    def _token(self, user: str, password: str) -> bytes:
        return hmac.new(
            self._key,
            user.encode("utf-8", "surrogatepass")
            + b"\0"
            + password.encode("utf-8", "surrogatepass"),
            hashlib.sha256,
        ).digest()

    def is_verified(self, user: str | None, password: str | None) -> bool:
        """True for credentials known good without hashing: cheap, for every caller."""
        if user is None or password is None:
            return False
        token = self._token(user, password)
        if token in self._permanent:
            return True
        with self._lock:
            if token in self._verified:
                self._verified.move_to_end(token)
                return True
        return False

    def with_well_known_password(self) -> list[str]:
        """The users whose password is WELL_KNOWN_PASSWORD (hashed entries too)."""
        return [
            user
            for user, credential in self._users.items()
            if hmac.compare_digest(credential.digest(WELL_KNOWN_PASSWORD), credential.expected())
        ]

    def check(self, user: str | None, password: str | None) -> bool:
        """True when this user exists and the password is theirs."""
        if user is None or password is None:
            return False
        if self.is_verified(user, password):
            return True
        credential = self._users.get(user)
        known = credential is not None
        credential = credential or self._dummy
        with self._slow:
            good = hmac.compare_digest(credential.digest(password), credential.expected())
            if credential.iterations < self._iterations:  # cost as much as the slowest entry
                hashlib.pbkdf2_hmac(
                    "sha256", b"", b"padding", self._iterations - credential.iterations
                )
        if good and known:
            with self._lock:
                self._verified[self._token(user, password)] = None
                while len(self._verified) > VERIFIED_CACHE_SIZE:
                    self._verified.popitem(last=False)
        return good and known


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic ...` header, else None.

    Moodle (PHP) sends UTF-8; some clients (Python's requests) send
    Latin-1. UTF-8 is tried first: a Latin-1 text with accents is almost
    never valid UTF-8, so both kinds of client can log in with any password.
    """
    if not header:
        return None
    scheme, _, data = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    user, sep, password = text.partition(":")
    return (user, password) if sep else None


def make_entry(user: str, password: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    """A `user:pbkdf2_sha256:...` entry for `MOODLE_MLBACKEND_PYTHON_USERS`."""
    check_user_name(user)
    if iterations < PBKDF2_MIN_ITERATIONS:
        raise BackendError(f"At least {PBKDF2_MIN_ITERATIONS} iterations are needed.")
    salt = secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac(
        "sha256", password.encode("utf-8"), salt.encode("utf-8"), iterations
    )
    return f"{user}:{PBKDF2_SCHEME}:{iterations}:{salt}:{digest.hex()}"


def check_user_name(user: str) -> None:
    """User names end at ':' and entries at ','; Basic auth cannot carry a ':' either."""
    if not user or set(user) & set(",:\n\r"):
        raise BackendError(
            f"The user name {user!r} cannot be used: it must be non-empty and "
            "contain no ',', ':' or line break."
        )


def new_password() -> str:
    """A random password for `mlbackend passwd --generate`."""
    return secrets.token_urlsafe(18)
