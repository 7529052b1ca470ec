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
#: Exit status of `mlbackend serve` when its configuration is wrong (EX_CONFIG
#: of sysexits.h), so that systemd does not restart it for ever
#: (RestartPreventExitStatus=). Moodle never runs `serve`, so never sees it.
CONFIG_ERROR = 78

#: The evaluation answer's figures (floats; `auc` ones for binary targets only).
EVALUATION_FIGURES = (
    "accuracy",
    "balanced accuracy",
    "precision",
    "recall",
    "f1_score",
    "score",
    "score_deviation",
    "auc",
    "auc_deviation",
    "min_score",
    "accepted_deviation",
)

NOT_TRAINED_MESSAGE = "Provided model have not been trained yet"
MISSING_CLASSES_MESSAGE = "Training data needs to include samples belonging to all classes"


class BackendError(Exception):
    """A failure Moodle must hear about as a JSON answer with a status.

    `message` is a sentence for a Moodle admin; `errors` goes into the
    answer's `errors` key when set.
    """

    def __init__(
        self,
        message: str,
        status: int = GENERAL_ERROR,
        errors: str | list[str] | None = None,
        **extra: Any,
    ) -> None:
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


class ConfigError(BackendError):
    """The server's configuration is wrong (users, options, storage directory):
    starting it again as it is would fail the same way."""

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message, status=CONFIG_ERROR, **extra)


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


#: Most characters of a value from a file (or a request) quoted in a message.
SHOWN_CHARS = 60


class _BoundedRepr:
    """repr() whose work and length are bounded whatever the value: nested
    lists whose levels share one object (a pickle's memo makes them from a few
    hundred bytes) are cut at a small depth and width, and integers too long
    for repr() (over 4,300 digits) are described by their size."""

    def __init__(self, limit: int) -> None:
        import reprlib

        class R(reprlib.Repr):
            def repr_int(self, x: int, level: int) -> str:
                if x.bit_length() > 128:
                    return f"<an integer of {x.bit_length()} bits>"
                return super().repr_int(x, level)

            def repr_instance(self, x: object, level: int) -> str:
                if x is None or isinstance(x, (float, complex, bool)):
                    return repr(x)
                shape = getattr(x, "shape", None)
                if shape == () and type(x).__module__.startswith("numpy"):
                    return repr(x)[: limit + 1]  # a NumPy scalar or dtype: short
                if isinstance(shape, tuple) and len(shape) <= 8:
                    return f"<{type(x).__name__} of shape {shape}>"
                return f"<{type(x).__name__}>"

        self.r = R()
        self.r.maxlevel = 3
        self.r.maxtuple = self.r.maxlist = self.r.maxarray = self.r.maxdict = 4
        self.r.maxset = self.r.maxfrozenset = self.r.maxdeque = 4
        self.r.maxstring = self.r.maxother = limit
        self.r.maxlong = 40
        self.limit = limit

    def __call__(self, value: object) -> str:
        try:
            text = self.r.repr(value)
        except Exception:  # noqa: BLE001 - a value whose repr fails is still named
            text = f"<{type(value).__name__}>"
        return text if len(text) <= self.limit else text[: self.limit] + "..."


_shown = _BoundedRepr(SHOWN_CHARS)


def shown(value: object) -> str:
    """A value taken from an input file or request, for a message: a bounded
    repr(), so that no input can make an answer (or the work of writing it)
    large. Every message that quotes input goes through this."""
    if isinstance(value, str):
        cut = value[:SHOWN_CHARS] + ("..." if len(value) > SHOWN_CHARS else "")
        return repr(cut)
    return _shown(value)
