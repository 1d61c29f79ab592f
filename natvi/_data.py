"""Reading and checking a user's CSV file for the ``natvi`` command.

Every problem raises :class:`DataError` (a ``ValueError``) with one line that names the file,
the column or row, the problem and what to do; the command prints it and exits with status 2.
Only the standard library and numpy are used (no pandas).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DataError",
    "Table",
    "read_csv",
    "LIKELIHOODS",
    "infer_likelihood",
    "check_target",
]

LIKELIHOODS = ("bernoulli", "softmax", "gaussian", "studentt", "poisson")
"""The ``--likelihood`` choices of ``natvi fit`` / ``natvi compare``."""

_MISSING = {"", "na", "nan", "null", "none", "?"}


class DataError(ValueError):
    """A problem with the user's data: printed as one line by the ``natvi`` command."""


@dataclass
class Table:
    """A CSV file as its header and one column of strings per name (cells stripped)."""

    path: Path
    columns: dict[str, list[str]]

    def features(self, names: list[str] | None = None, exclude: str | None = None) -> np.ndarray:
        """The numeric feature matrix ``[N, D]`` (float64) from ``names`` (default: every column
        except ``exclude``); raises :class:`DataError` for unknown, missing or non-numeric cells."""
        if names is None:
            names = [c for c in self.columns if c != exclude]
        if not names:
            raise DataError(f"{self.path}: no feature columns left besides the target {exclude!r}.")
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise DataError(
                f"{self.path}: column(s) {', '.join(map(repr, missing))} not found; the model was "
                f"trained on {names} (found {list(self.columns)})."
            )
        return np.column_stack([self.numeric(n, what="feature") for n in names])

    def numeric(self, name: str, what: str = "column") -> np.ndarray:
        """Column ``name`` as float64 ``[N]``; NaN and non-numeric cells raise :class:`DataError`."""
        cells = self.column(name)
        out = np.empty(len(cells))
        for i, cell in enumerate(cells):
            if cell.lower() in _MISSING:
                raise DataError(
                    f"{self.path}: {what} {name!r} has a missing/NaN value in data row {i + 1}; "
                    "remove or impute missing values first."
                )
            try:
                out[i] = float(cell)
            except ValueError:
                raise DataError(
                    f"{self.path}: {what} {name!r} is not numeric (row {i + 1} holds {cell!r}); "
                    "encode categorical features as numbers or drop the column."
                ) from None
            if not np.isfinite(out[i]):
                raise DataError(
                    f"{self.path}: {what} {name!r} holds a non-finite value {cell!r} in data row "
                    f"{i + 1}; remove or replace it."
                )
        return out

    def column(self, name: str) -> list[str]:
        if name not in self.columns:
            raise DataError(
                f"{self.path}: no column named {name!r}; the columns are "
                f"{', '.join(self.columns)}."
            )
        return self.columns[name]

    def labels(self, name: str) -> np.ndarray:
        """Column ``name`` as class labels: integers if every cell is an integer, else strings."""
        cells = self.column(name)
        for i, cell in enumerate(cells):
            if cell.lower() in _MISSING:
                raise DataError(
                    f"{self.path}: target {name!r} has a missing value in data row {i + 1}; "
                    "drop unlabelled rows first."
                )
        try:
            values = np.array([float(c) for c in cells])
        except ValueError:
            return np.array(cells, dtype=object)
        if np.all(values == np.round(values)):
            return values.astype(np.int64)
        return np.array(cells, dtype=object)


def read_csv(path: str | Path) -> Table:
    """Read a CSV file with a header row into a :class:`Table`.

    Raises :class:`DataError` if the file is missing, empty, has no data rows, duplicate or
    empty column names, or rows of the wrong length.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path.")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if any(cell.strip() for cell in r)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: not a readable CSV text file ({err}).") from None
    if not rows:
        raise DataError(f"{path}: the file is empty; expected a header row and data rows.")
    header = [h.strip() for h in rows[0]]
    if any(not h for h in header):
        raise DataError(f"{path}: the header has an empty column name; name every column.")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column name(s) {dupes}; make the names unique.")
    body = rows[1:]
    if not body:
        raise DataError(f"{path}: the file has a header but no data rows.")
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise DataError(
                f"{path}: data row {i + 1} has {len(row)} cells but the header has "
                f"{len(header)}; fix the row."
            )
    columns = {h: [row[j].strip() for row in body] for j, h in enumerate(header)}
    return Table(path=path, columns=columns)


def infer_likelihood(table: Table, target: str) -> str:
    """The default likelihood for ``target``: classification for non-numeric labels or exactly two
    distinct values (``bernoulli``; ``softmax`` for more string classes), otherwise ``gaussian``."""
    y = table.labels(target)
    n_classes = len(np.unique(y.astype(str)))
    if y.dtype == object:
        return "bernoulli" if n_classes <= 2 else "softmax"
    return "bernoulli" if n_classes <= 2 else "gaussian"


def check_target(table: Table, target: str, likelihood: str) -> np.ndarray:
    """The target column, checked against what ``likelihood`` can take.

    Returns class labels (``bernoulli``/``softmax``), float64 values (``gaussian``/``studentt``)
    or non-negative integer counts (``poisson``).
    """
    if likelihood not in LIKELIHOODS:
        raise DataError(f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}.")
    where = f"{table.path}: target {target!r}"
    if likelihood in ("bernoulli", "softmax"):
        y = table.labels(target)
        classes = np.unique(y.astype(str))
        if len(classes) < 2:
            raise DataError(
                f"{where} has a single class ({classes[0]!r}); a classifier needs at least two."
            )
        if likelihood == "bernoulli" and len(classes) > 2:
            raise DataError(
                f"{where} has {len(classes)} classes but the bernoulli likelihood takes two; "
                "use --likelihood softmax."
            )
        return y
    y = table.numeric(target, what="target")
    if likelihood == "poisson":
        if np.any(y < 0) or np.any(y != np.round(y)):
            bad = y[(y < 0) | (y != np.round(y))][0]
            raise DataError(
                f"{where} holds {bad:g}, but the poisson likelihood takes non-negative integer "
                "counts; use --likelihood gaussian for real-valued targets."
            )
        return y.astype(np.int64)
    if np.ptp(y) == 0:
        raise DataError(f"{where} is constant ({y[0]:g}); there is nothing to regress.")
    return y
