"""Exceptions and the one convention for error rows: ``error = "<reason>: <detail>"``.

The reason is a short, stable token (``corrupt``, ``empty``, ``decompression_bomb``...) so that
``GROUP BY split_part(error, ':', 1)`` counts failures by kind; the detail is free text.
"""

from __future__ import annotations


class SonifyError(Exception):
    """Base class: errors that are printed as one line, without a traceback."""


class ConfigError(SonifyError):
    """Bad configuration: the message names the key and the valid choices."""


class SchemaError(SonifyError):
    """A table on disk does not match the schema declared in code."""


class MissingTable(SonifyError, FileNotFoundError):
    """A table a stage reads has no partitions yet (its stage has not run in this run folder)."""

    def __init__(self, message: str, table: str = ""):
        super().__init__(message)   # args hold the message only: the exception pickles (a Ray worker may raise it)
        self.table = table


class ModelNotAvailable(SonifyError):
    """A model id or path could not be loaded; the message says how to provide it."""


def error_text(reason: str, detail: object = "") -> str:
    """Format an error-row message; `reason` must be a short token without a colon."""
    if ":" in reason or not reason:
        raise ValueError(f"bad error reason {reason!r}")
    detail = str(detail).strip().replace("\n", " ")
    if len(detail) > 300:
        detail = detail[:297] + "..."
    return f"{reason}: {detail}" if detail else reason


def error_reason(error: str | None) -> str | None:
    """The reason token of an error message written by `error_text`."""
    if error is None:
        return None
    return error.split(":", 1)[0]
