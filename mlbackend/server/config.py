"""The settings of one server: command-line options and the environment.

Moodle's contract names the environment variables (users, storage
directory, S3 bucket, temporary directory); everything about how the server
runs (address, threads, limits) is an option of `mlbackend serve`, whose
defaults are `ServerConfig`'s. Light on purpose: the command line imports
it to declare `serve`.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

from mlbackend import VERSION_OVERRIDE_ENV
from mlbackend.contract import ConfigError

USERS_ENV = "MOODLE_MLBACKEND_PYTHON_USERS"
#: Iterations of the PBKDF2-HMAC-SHA256 entries `mlbackend passwd` makes:
#: OWASP's recommendation (2023).
PBKDF2_ITERATIONS = 600_000
DIR_ENV = "MOODLE_MLBACKEND_PYTHON_DIR"
S3_BUCKET_ENV = "MOODLE_MLBACKEND_PYTHON_S3_BUCKET_NAME"
TEMPDIR_ENV = "MOODLE_MLBACKEND_TEMPDIR"

#: Every environment variable the server reads, and what it means: the
#: reference in docs/server.md is generated from this list.
ENVIRONMENT: list[tuple[str, str]] = [
    (USERS_ENV, "comma-separated `user:password` entries (required; formats below)"),
    (
        DIR_ENV,
        "directory of the models, `DIR/UNIQUEID/DIRHASH/` (default: `mlbackend/server` "
        "under the platform's user data directory, e.g. "
        "`~/.local/share/mlbackend/server`)",
    ),
    (S3_BUCKET_ENV, "keep the models in this S3 bucket instead of a directory"),
    (
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_PROFILE, "
        "AWS_ENDPOINT_URL, ...",
        "S3 credentials, region and endpoint, read by boto3 as usual (an instance role works too)",
    ),
    (
        TEMPDIR_ENV,
        "directory for temporary files (uploads, models fetched from S3); default: "
        "the system's (`TMPDIR`, `/tmp`). Each request's directory is "
        "`mlbackend-req-PID-...`; at start the server removes those of servers no longer "
        "running (killed mid-request)",
    ),
    (
        VERSION_OVERRIDE_ENV,
        "version `/version` reports, for Moodle releases with another version gate",
    ),
]

MIB = 1 << 20


@dataclass(frozen=True)
class S3Limits:
    """How long a request waits on the S3 store, and how many wait at once
    (the --s3-* options; `mlbackend.server.s3client` applies them)."""

    connect_timeout: float
    read_timeout: float
    deadline: float
    max_waiting: int

    @property
    def per_key(self) -> int:
        """Threads that may wait on one object: half the places, so that
        one stalled object leaves the other half to the other models."""
        return max(1, math.ceil(self.max_waiting / 2))

    @property
    def attempt_seconds(self) -> float:
        """The longest one attempt can take when the store is silent."""
        return self.connect_timeout + self.read_timeout

    @property
    def retry_after(self) -> int:
        """What a 503 advises: by then, every request waiting now has ended."""
        return max(1, math.ceil(self.deadline))


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 8
    max_trainings: int = 1
    max_upload_bytes: int = 512 * MIB
    max_unzipped_bytes: int = 256 * MIB
    storage_dir: str | None = None  # local storage; None with S3
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    temp_dir: str | None = None
    trusted_proxy: str | None = None
    # The S3 store, waited on within bounds (see mlbackend.server.s3client):
    # a Moodle request waits at most s3_deadline seconds per step on it.
    s3_connect_timeout: float = 5.0
    s3_read_timeout: float = 10.0
    s3_deadline: float = 30.0
    s3_max_waiting: int | None = None  # None: --workers minus 2, at least 1
    #: Connections open at once; None: sized from the descriptor limit.
    max_connections: int | None = None
    #: Seconds a request's headers may take from its first byte.
    header_timeout: float = 20.0

    @property
    def storage_kind(self) -> str:
        """Where models are kept: "s3" (a bucket) or "directory"."""
        return "s3" if self.s3_bucket else "directory"

    def s3_limits(self) -> S3Limits:
        return S3Limits(
            connect_timeout=self.s3_connect_timeout,
            read_timeout=self.s3_read_timeout,
            deadline=self.s3_deadline,
            max_waiting=self.s3_max_waiting or max(1, self.workers - 2),
        )

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, environ: dict[str, str] | os._Environ[str] | None = None
    ) -> ServerConfig:
        env = os.environ if environ is None else environ
        for name in ("workers", "max_trainings", "max_upload_mb", "max_unzipped_mb"):
            if getattr(args, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1.")
        if args.max_connections is not None and args.max_connections < 1:
            raise ConfigError("--max-connections must be at least 1.")
        if not args.header_timeout > 0:
            raise ConfigError("--header-timeout must be more than 0 seconds.")
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port {args.port} is not a TCP port.")
        for name in ("s3_connect_timeout", "s3_read_timeout"):
            if not getattr(args, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be more than 0 seconds.")
        if not args.s3_deadline >= args.s3_connect_timeout + args.s3_read_timeout:
            raise ConfigError(
                "--s3-deadline must be at least --s3-connect-timeout plus "
                "--s3-read-timeout: room for one whole attempt."
            )
        if args.s3_max_waiting is not None and not 1 <= args.s3_max_waiting <= max(
            1, args.workers - 1
        ):
            raise ConfigError(
                "--s3-max-waiting must be at least 1 and below --workers, so that "
                "threads stay free for /version and requests that do not wait on S3."
            )
        bucket = env.get(S3_BUCKET_ENV, "").strip() or None
        temp_dir = env.get(TEMPDIR_ENV, "").strip() or None
        if temp_dir and not os.path.isdir(temp_dir):
            raise ConfigError(f"{TEMPDIR_ENV} names {temp_dir}, which is not a directory.")
        storage_dir = None
        if bucket is None:
            storage_dir = env.get(DIR_ENV, "").strip() or default_storage_dir()
        return cls(
            host=args.host,
            port=args.port,
            workers=args.workers,
            max_trainings=args.max_trainings,
            max_upload_bytes=args.max_upload_mb * MIB,
            max_unzipped_bytes=args.max_unzipped_mb * MIB,
            storage_dir=storage_dir,
            s3_bucket=bucket,
            s3_endpoint_url=args.s3_endpoint_url,
            temp_dir=temp_dir,
            trusted_proxy=args.trusted_proxy,
            s3_connect_timeout=args.s3_connect_timeout,
            s3_read_timeout=args.s3_read_timeout,
            s3_deadline=args.s3_deadline,
            s3_max_waiting=args.s3_max_waiting,
            max_connections=args.max_connections,
            header_timeout=args.header_timeout,
        )


def default_storage_dir() -> str:
    """Where models live when the admin names no directory."""
    import platformdirs

    return os.path.join(platformdirs.user_data_dir("mlbackend"), "server")
