"""Typed errors. Every message is one line: what, where, what was expected, what was found.

The command maps `GateError` to exit code 1 (the file was made but failed a check the user
asked for) and every other `TfquantError` to exit code 2 (bad usage or bad input).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Optional

# How the caller spells an option: "python" (a keyword argument), "command" (a flag) or "service"
# (a JSON key or a form field). The command sets "command" at its edge; messages use `called()`.
NAMINGS = ("python", "command", "service")
_NAMING: contextvars.ContextVar[str] = contextvars.ContextVar("tfquant_naming", default="python")
_SPELLINGS: dict[str, dict[str, str]] = {}


def spell(name: str, **spellings: str) -> None:
    """Record how the command (`command=`) and the service (`service=`) spell option `name`."""
    _SPELLINGS.setdefault(name, {}).update(spellings)


def called(name: str) -> str:
    """Option `name` as the current caller knows it: `max_drop`, or `--max-drop` in the command."""
    return _SPELLINGS.get(name, {}).get(_NAMING.get(), name)


@contextlib.contextmanager
def naming(kind: str) -> Iterator[None]:
    """Spell options as `kind` ("python", "command" or "service") in every message raised inside."""
    if kind not in NAMINGS:
        raise ValueError(f"naming: expected one of {NAMINGS}, found {kind!r}")
    token = _NAMING.set(kind)
    try:
        yield
    finally:
        _NAMING.reset(token)


class TfquantError(Exception):
    """Base class of every error tfquant raises on purpose."""

    exit_code = 2


def one_line(exc: BaseException, limit: Optional[int] = None) -> str:
    """An exception's message on one line (every run of whitespace one space), cut at `limit` characters."""
    text = " ".join(str(exc).split())
    return text if limit is None else text[:limit]


def problem(where: object, expected: str, found: object) -> str:
    """Format the one-line message shape every tfquant error uses."""
    return f"{where}: expected {expected}, found {found}"


class ModelLoadError(TfquantError):
    """A model file is missing, corrupt, of an unknown format, or holds code we will not run."""


class DataError(TfquantError):
    """Calibration, evaluation or training data does not fit the model or is unusable."""


class RecipeError(TfquantError):
    """An option, or a combination of options, that tfquant does not accept."""


class ConversionError(TfquantError):
    """TFLiteConverter refused the model."""


class TFLiteFileError(TfquantError):
    """A .tflite file is missing, corrupt, or cannot be run by the interpreter."""


class OutputError(TfquantError):
    """An output path already exists (without overwrite) or cannot be written."""


class BackendError(TfquantError):
    """A store or an executor the service was pointed at cannot be used: unreachable, or the wrong kind."""


class ServiceError(TfquantError):
    """The converter service refused a request or a job failed; the message is the server's."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class GateError(TfquantError):
    """The conversion worked but failed a check the user asked for.

    `result` holds the full `QuantizationResult`, so a caller can still read the report.
    """

    exit_code = 1

    def __init__(self, message: str, result: Any = None):
        super().__init__(message)
        self.result = result


class AccuracyBudgetError(GateError):
    """The accuracy drop measured on the interpreter exceeds `max_drop`."""


class StrictModeError(GateError):
    """A file meant to be fully integer still holds float ops."""
