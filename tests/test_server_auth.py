"""Users and passwords of server mode (no server needed): every accepted
entry format, constant-time checks, and `mlbackend passwd`."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from helpers.run import backend_env

from mlbackend.server import auth

FAST = 10_000  # PBKDF2 iterations for tests: the minimum accepted


def sha256_entry(user: str, password: str, salt: str = "da243a51bce11bf9083d78da99a2544b") -> str:
    return f"{user}:sha256:{salt}:{hashlib.sha256((salt + password).encode()).hexdigest()}"


def test_plain_old_sha256_and_pbkdf2_entries_are_accepted():
    value = ",".join(
        [
            "alice:pa$$word",
            sha256_entry("bob", "hunter2"),
            auth.make_entry("carol", "s3cret", iterations=FAST),
        ]
    )
    users = auth.Users(auth.parse_users(value))
    assert len(users) == 3
    assert users.check("alice", "pa$$word")
    assert users.check("bob", "hunter2")
    assert users.check("carol", "s3cret")
    assert users.check("carol", "s3cret")  # second time from the verified cache
    for user, wrong in (
        ("alice", "pa$$wor"),
        ("bob", "hunter3"),
        ("carol", "s3creT"),
        ("dave", "pa$$word"),
        ("alice", ""),
        (None, "x"),
        ("alice", None),
    ):
        assert not users.check(user, wrong)


def test_a_wrong_password_is_never_remembered():
    users = auth.Users(auth.parse_users(auth.make_entry("carol", "s3cret", iterations=FAST)))
    assert not users.check("carol", "nope")
    assert not users._verified
    assert users.check("carol", "s3cret")
    assert len(users._verified) == 1
    assert not users.check("carol", "nope")


def test_unicode_passwords():
    users = auth.Users(
        auth.parse_users("zoë:pässwörd," + auth.make_entry("ümit", "ñandú", iterations=FAST))
    )
    assert users.check("zoë", "pässwörd")
    assert users.check("ümit", "ñandú")


@pytest.mark.parametrize(
    "value, words",
    [
        (None, "no users"),
        ("", "no users"),
        (" , ", "no users"),
        ("nopassword", "not user:password"),
        (":pw", "not user:password"),
        ("u:sha256:salt:nothex", "HASH:SALT:HEXDIGEST"),
        ("u:pbkdf2_sha256:100:salt:" + "ab" * 32, "iterations"),
        ("u:pbkdf2_sha256:x:salt:ab", "ITERATIONS"),
        ("u:pass:word", "not a known hash"),
        ("nopw:", "is empty"),
        ("moodle:secret,nopw:", "is empty"),
    ],
)
def test_bad_values_say_how_to_create_users(value, words):
    with pytest.raises(auth.UsersError) as err:
        auth.parse_users(value)
    assert words in err.value.message
    assert "mlbackend passwd" in err.value.message


def test_entry_format():
    entry = auth.make_entry("moodle", "pw", iterations=FAST)
    user, scheme, iterations, salt, digest = entry.split(":")
    assert (user, scheme, iterations) == ("moodle", "pbkdf2_sha256", str(FAST))
    assert digest == hashlib.pbkdf2_hmac("sha256", b"pw", salt.encode(), FAST).hex()
    assert auth.make_entry("moodle", "pw", iterations=FAST) != entry  # fresh salt
    for bad in ("", "a:b", "a,b", "a\nb"):
        with pytest.raises(auth.BackendError):
            auth.make_entry(bad, "pw")


def run_passwd(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlbackend", "passwd", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=backend_env(),
        timeout=120,
    )


def test_passwd_prints_one_line_the_server_accepts():
    p = run_passwd(
        "moodle", "backup", "--stdin", "--iterations", str(FAST), stdin="first pw\nsecond:pw\n"
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("\n") == 1
    users = auth.Users(auth.parse_users(p.stdout.strip()))
    assert users.check("moodle", "first pw")
    assert users.check("backup", "second:pw")


def test_passwd_generate_shows_passwords_on_stderr_only():
    p = run_passwd("moodle", "--generate", "--iterations", str(FAST))
    assert p.returncode == 0, p.stderr
    password = p.stderr.split("password for moodle: ", 1)[1].split()[0]
    assert password not in p.stdout
    assert auth.Users(auth.parse_users(p.stdout.strip())).check("moodle", password)


def test_passwd_refuses_bad_user_names():
    p = run_passwd("a:b", "--generate")
    assert p.returncode == 1
    assert "cannot be used" in p.stdout


def test_basic_credentials_in_utf8_and_latin1():
    import base64

    def header(raw: bytes) -> str:
        return "Basic " + base64.b64encode(raw).decode()

    assert auth.basic_credentials(header("zoë:pä:ss".encode())) == ("zoë", "pä:ss")
    assert auth.basic_credentials(header("zoë:päss".encode("latin-1"))) == ("zoë", "päss")
    assert auth.basic_credentials(header(b"user:")) == ("user", "")
    for bad in (None, "", "Bearer abc", "Basic !!!", header(b"nocolon")):
        assert auth.basic_credentials(bad) is None


def test_plain_entries_are_verified_from_start_up():
    users = auth.Users(auth.parse_users("alice:pw," + sha256_entry("bob", "hunter2")))
    assert users.is_verified("alice", "pw")
    assert not users.is_verified("alice", "pw2") and not users.is_verified("bob", "hunter2")
    assert users.check("bob", "hunter2") and users.is_verified("bob", "hunter2")


def test_a_failed_check_costs_the_same_for_known_and_unknown_users(monkeypatch):
    """Counted, not timed: every failed check runs as many PBKDF2 rounds as
    the slowest entry, whether the user exists (plain, sha256 or PBKDF2
    entry) or not. (A known user with a wrong password answered in 3 ms, an
    unknown one in 310 ms.)"""
    value = ",".join(
        [
            "alice:pw",
            sha256_entry("bob", "hunter2"),
            auth.make_entry("carol", "s3cret", iterations=FAST),
            auth.make_entry("dave", "x", iterations=2 * FAST),
        ]
    )
    users = auth.Users(auth.parse_users(value))
    rounds: list[int] = []
    real = hashlib.pbkdf2_hmac

    def counting(name: str, password: bytes, salt: bytes, iterations: int) -> bytes:
        rounds.append(iterations)
        return real(name, password, salt, iterations)

    monkeypatch.setattr(auth.hashlib, "pbkdf2_hmac", counting)
    costs = {}
    for user in ("alice", "bob", "carol", "dave", "nobody", "ALICE"):
        rounds.clear()
        assert not users.check(user, "wrong")
        costs[user] = sum(rounds)
    assert set(costs.values()) == {2 * FAST}, costs
    rounds.clear()
    assert users.check("alice", "pw") and users.check("carol", "s3cret")
    rounds.clear()
    assert users.check("carol", "s3cret") and rounds == []  # remembered: no hashing


def serve_with_users(value: str, tmp_path) -> subprocess.CompletedProcess[str]:
    """`mlbackend serve` with these users, as far as it gets."""
    return subprocess.run(
        [sys.executable, "-m", "mlbackend", "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env=backend_env(
            {"MOODLE_MLBACKEND_PYTHON_USERS": value, "MOODLE_MLBACKEND_PYTHON_DIR": str(tmp_path)}
        ),
    )


def test_the_server_refuses_to_start_with_an_empty_password(tmp_path):
    p = serve_with_users("moodle:pw,nopw:", tmp_path)
    assert p.returncode == 78  # EX_CONFIG
    assert "nopw" in p.stdout and "is empty" in p.stdout


def test_the_well_known_test_password_is_found_in_every_entry_format():
    value = ",".join(
        [
            "default:sshhhh",
            sha256_entry("ci", "sshhhh"),
            auth.make_entry("docker", "sshhhh", iterations=FAST),
            "moodle:s3cret",
            sha256_entry("bob", "sshhhh!"),
        ]
    )
    users = auth.Users(auth.parse_users(value))
    assert users.with_well_known_password() == ["default", "ci", "docker"]


@pytest.mark.parametrize(
    "entry",
    [
        "moodle:Hunter2SecretPart:rest",
        "moodle:sha256:Hunter2SecretPart:nothex",
        "moodle:pbkdf2_sha256:100:Hunter2SecretPart:" + "ab" * 32,
        "moodle:pbkdf2_sha256:Hunter2SecretPart",
    ],
)
def test_a_malformed_entry_is_named_never_quoted(entry):
    with pytest.raises(auth.UsersError) as err:
        auth.parse_users("backup:pw," + entry)
    message = err.value.message
    assert "'moodle'" in message and "entry 2 of" in message
    assert "Hunter2" not in message
    assert "rest" not in message.split() and "'rest'" not in message


def test_the_server_never_shows_a_password_it_refuses(tmp_path):
    p = serve_with_users("moodle:Hunter2SecretPart:rest", tmp_path)
    assert p.returncode == 78  # EX_CONFIG
    assert "'moodle' (entry 1 of MOODLE_MLBACKEND_PYTHON_USERS)" in p.stdout
    assert "Hunter2" not in p.stdout + p.stderr
