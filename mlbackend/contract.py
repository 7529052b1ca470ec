"""Moodle's contract as code: status codes, the error type, answer shapes.

Everything that reaches Moodle passes through here, so that the command line
and the server answer in exactly the same shapes.
"""
from __future__ import annotations

import json
from typing import Any

OK = 0
GENERAL_ERROR = 1
NO_DATASET = 2
LOW_SCORE = 4
NOT_ENOUGH_DATA = 8

NOT_TRAINED_MESSAGE = "Provided model have not been trained yet"
MISSING_CLASSES_MESSAGE = "Training data needs to include samples belonging to all classes"


class BackendError(Exception):
    """A failure Moodle must hear about as a JSON answer with a status.

    `message` is a sentence for a Moodle admin; `errors` goes into the
    answer's `errors` key when set.
    """

    def __init__(self, message: str, status: int = GENERAL_ERROR,
                 errors: str | list[str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.errors = errors
        self.extra = extra

    def answer(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "info": [self.message]}
        if self.errors is not None:
            out["errors"] = self.errors
        out.update(self.extra)
        return out


class NotTrainedError(BackendError):
    """The model asked for was never trained. Prediction answers it with
    NO_DATASET; export with status 1, as Moodle's contract says; over HTTP an
    export of it is a 503."""

    def __init__(self, message: str = NOT_TRAINED_MESSAGE, status: int = NO_DATASET) -> None:
        super().__init__(message, status=status)


class WriteError(BackendError):
    """The backend could not write its own files (a full disk, permissions):
    not the caller's fault, so over HTTP it is a 500 outside the JSON answers."""


def answer(status: int = OK, info: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"status": status, "info": list(info or [])}
    out.update(fields)
    return out


def to_json_line(obj: dict[str, Any]) -> str:
    """One line of JSON: Moodle keeps only the last line of stdout."""
    return json.dumps(obj, separators=(", ", ": "), allow_nan=False)
