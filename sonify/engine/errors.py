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
    """A table on disk, or one a stage returns, does not match the schema declared in code."""


class StageContractError(SonifyError):
    """A stage broke the engine's contract (an input row without exactly one result or error row): a bug in
    the stage, which a retry would only repeat."""


class MissingTable(SonifyError, FileNotFoundError):
    """A table a stage reads has no partitions yet (its stage has not run in this run folder)."""

    def __init__(self, message: str, table: str = ""):
        super().__init__(message)   # args hold the message only: the exception pickles (a Ray worker may raise it)
        self.table = table


class DiskFull(SonifyError):
    """No space left where the run writes: the stage stops at once (a retry would only fail again)."""


def disk_full(e: BaseException) -> bool:
    """Whether `e` is a full disk or quota (an OSError, or DuckDB's or Arrow's error saying so)."""
    import errno

    return (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left on device" in str(e)


def disk_full_line(run_dir, stage: str) -> str:
    return (f"no space left on device under {run_dir} (stage {stage}): free space there and run again; "
            f"finished partitions are kept, no partial one is")


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
    """The reason token of an error message written by `error_text` (None for None). Its SQL twin is
    `error_reason_sql`; the saved queries under `manifests/` write the same expression."""
    if error is None:
        return None
    return error.split(":", 1)[0]


def error_reason_sql(column: str = "error") -> str:
    """`error_reason` as a DuckDB expression over `column` (NULL for NULL): split_part's first part is
    the text before the first colon, all of it when there is none."""
    return f"split_part({column}, ':', 1)"
