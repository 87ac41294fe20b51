"""The errors a user can cause (bad data, bad settings, not trained yet, bad usage), with helpers to name the
offending rows."""
from __future__ import annotations

from typing import Iterable


class DataError(ValueError):
    """A failure the user can cause and fix: the base of prodcat's errors (each mapped to one message; a
    service maps the kinds to status codes). Raised as such: bad input data, the message naming the file,
    the column and the offending rows - also kept apart (`column`, `problem`, `rows`) so that a service can
    name each offending field of a request."""

    def __init__(self, message: str, *, column: str | None = None, problem: str | None = None,
                 rows: list[int] | None = None):
        super().__init__(message)
        self.column, self.problem, self.rows = column, problem, rows


class SettingsError(DataError):
    """A bad setting: a config file, a `--set` value or the settings a model was built with."""


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
    raise DataError(f"{where}: {problem}{at}", column=column, problem=problem,
                    rows=None if rows is None else list(rows))
