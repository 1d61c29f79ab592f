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

from natvi.likelihoods.registry import check_targets, entry, trainable_names

__all__ = [
    "DataError",
    "Table",
    "read_csv",
    "LIKELIHOODS",
    "infer_likelihood",
    "check_target",
]

LIKELIHOODS = trainable_names()
"""The ``--likelihood`` choices of ``natvi fit`` / ``natvi compare`` (from the likelihood
vocabulary, :mod:`natvi.likelihoods.registry`)."""

MAX_INFERRED_CLASSES = 20
"""More distinct integer values than this are not taken for class labels without
``--likelihood``: they may as well be counts or measurements."""

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
    """The likelihood for ``target`` when ``--likelihood`` is not given, as scikit-learn reads
    the column (:func:`sklearn.utils.multiclass.type_of_target`): two distinct values →
    ``bernoulli``; more distinct labels (strings, or integers such as 0/1/2) → ``softmax``;
    real values → ``gaussian``. More than :data:`MAX_INFERRED_CLASSES` distinct integers are
    ambiguous (labels, counts or measurements?): :class:`DataError` asks for ``--likelihood``."""
    from sklearn.utils.multiclass import type_of_target

    cells = table.column(target)
    table.labels(target)  # a missing label is an error whatever the task
    try:
        y = np.array([float(c) for c in cells])
    except ValueError:
        y = np.array(cells, dtype=object)
    kind = type_of_target(y)
    n_classes = len(np.unique(y))
    if kind == "multiclass" and y.dtype != object and n_classes > MAX_INFERRED_CLASSES:
        raise DataError(
            f"{table.path}: target {target!r} holds {n_classes} distinct integers: class labels, "
            "counts or measurements? Say which with --likelihood softmax (classes), poisson "
            "(counts) or gaussian (real values)."
        )
    inferred = {"binary": "bernoulli", "multiclass": "softmax", "continuous": "gaussian"}
    if kind not in inferred:
        raise DataError(
            f"{table.path}: cannot tell what target {target!r} is (scikit-learn reads it as "
            f"{kind!r}); choose --likelihood {{{','.join(LIKELIHOODS)}}}."
        )
    return inferred[kind]


def check_target(table: Table, target: str, likelihood: str) -> np.ndarray:
    """The target column, checked against what ``likelihood`` can take (the likelihood's own
    :meth:`~natvi.likelihoods.Likelihood.check_targets`) and against what the estimators train.

    Returns class labels (``bernoulli``/``softmax``/``robustmax``), float64 values
    (``gaussian``/``studentt``) or non-negative integer counts (``poisson``).
    """
    if likelihood not in LIKELIHOODS:
        raise DataError(
            f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}."
        )
    where = f"{table.path}: target {target!r}"
    task = entry(likelihood).task
    if task in ("binary", "multiclass"):
        y = _checked(likelihood, table.labels(target), where)
        n_classes = len(np.unique(y.astype(str)))
        if task == "multiclass" and n_classes == 2:
            raise DataError(
                f"{where} has 2 classes: natvi trains two classes with one latent GP and the "
                f"bernoulli likelihood, not {likelihood}; use --likelihood bernoulli (or leave "
                "--likelihood out)."
            )
        return y
    y = _checked(likelihood, table.numeric(target, what="target"), where)
    if task == "counts":
        return y.astype(np.int64)
    if np.ptp(y) == 0:
        raise DataError(f"{where} is constant ({y[0]:g}); there is nothing to regress.")
    return y


def _checked(likelihood: str, y: np.ndarray, where: str) -> np.ndarray:
    try:
        return check_targets(likelihood, y, where, suggest="--likelihood {}")
    except ValueError as err:
        raise DataError(str(err)) from None
