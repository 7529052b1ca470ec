"""mlbackend: the machine-learning backend of Moodle Learning Analytics.

This module must stay import-light: `mlbackend version` and `--help` load it,
and they must answer without TensorFlow.
"""

import os

__version__ = "3.1.0"

#: Environment variable that makes `version` report another version, for
#: Moodle releases whose version gate wants something else (Moodle 3.8-3.11
#: accepted only 2.x backends).
VERSION_OVERRIDE_ENV = "MLBACKEND_REPORTED_VERSION"


def reported_version() -> str:
    """The version Moodle sees: ours, unless the admin overrides it."""
    return os.environ.get(VERSION_OVERRIDE_ENV, "").strip() or __version__
