"""The one error type a user sees for bad input, with helpers to name the offending rows."""
from __future__ import annotations

from typing import Iterable


class DataError(ValueError):
    """Bad input data: the message names the file, the column and the offending rows."""


class NotTrainedError(DataError):
    """A model that is needed is not saved yet, or is out of date with what it was made from."""


class UsageError(DataError):
    """A request the saved models cannot answer as asked (an argument out of their range)."""


def describe_rows(rows: Iterable, limit: int = 5) -> str:
    """'rows 3, 17, 42 (and 5 more)' for an iterable of row numbers or ids."""
    rows = list(rows)
    shown = ", ".join(str(r) for r in rows[:limit])
    more = f" (and {len(rows) - limit} more)" if len(rows) > limit else ""
    return f"{shown}{more}"


def fail(path, column: str | None, problem: str, rows: Iterable | None = None) -> None:
    """Raise a DataError 'FILE, column COL: PROBLEM at rows ...'."""
    where = f"{path}" + (f", column '{column}'" if column else "")
    at = f" (rows {describe_rows(rows)}; row numbers count data rows from 0)" if rows is not None else ""
    raise DataError(f"{where}: {problem}{at}")
