"""The settings of one server: command-line options and the environment.

Moodle's contract names the environment variables (users, storage
directory, S3 bucket, temporary directory); everything about how the server
runs (address, threads, limits) is an option of `mlbackend serve`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from mlbackend import VERSION_OVERRIDE_ENV
from mlbackend.contract import ConfigError
from mlbackend.server.auth import USERS_ENV

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

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, environ: dict[str, str] | os._Environ[str] | None = None
    ) -> ServerConfig:
        env = os.environ if environ is None else environ
        for name in ("workers", "max_trainings", "max_upload_mb", "max_unzipped_mb"):
            if getattr(args, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1.")
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port {args.port} is not a TCP port.")
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
        )


def default_storage_dir() -> str:
    """Where models live when the admin names no directory."""
    import platformdirs

    return os.path.join(platformdirs.user_data_dir("mlbackend"), "server")
