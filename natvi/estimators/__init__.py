"""scikit-learn estimators built on :class:`natvi.gp.SVGP` and natural gradients.

- :class:`SparseGPClassifier` — binary (probit/logit) or multi-class (softmax/robustmax),
  chosen from the labels;
- :class:`SparseGPRegressor` — Gaussian or Student-t noise;
- :class:`SparseGPCountRegressor` — Poisson counts.

:func:`load` reads a file written by ``estimator.save(path)`` (a state dict plus plain metadata,
readable with ``torch.load(path, weights_only=True)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from natvi._io import load_torch_file
from natvi.estimators._base import (
    FORMAT,
    TRAINING_DEFAULTS,
    SparseGPBase,
    kmeans_inducing_points,
)
from natvi.estimators.classifier import SparseGPClassifier
from natvi.estimators.regressors import SparseGPCountRegressor, SparseGPRegressor
from natvi.likelihoods.registry import entry

__all__ = [
    "SparseGPClassifier",
    "SparseGPRegressor",
    "SparseGPCountRegressor",
    "kmeans_inducing_points",
    "TRAINING_DEFAULTS",
    "make_estimator",
    "load",
]

_ADVICE = "create one with 'natvi fit' or estimator.save(path)."
_CLASSES = {c.__name__: c for c in (SparseGPClassifier, SparseGPRegressor, SparseGPCountRegressor)}


def make_estimator(likelihood: str, **params: Any) -> SparseGPBase:
    """The estimator that trains the likelihood named ``likelihood`` (the vocabulary of
    :mod:`natvi.likelihoods.registry`): ``bernoulli``/``softmax``/``robustmax`` →
    :class:`SparseGPClassifier` (``multiclass`` set from the name), ``gaussian``/``studentt`` →
    :class:`SparseGPRegressor`, ``poisson`` → :class:`SparseGPCountRegressor`."""
    e = entry(likelihood)
    if e.estimator is None:
        raise ValueError(
            f"no estimator trains the {likelihood} likelihood; build a model by hand, e.g. "
            f"natvi.gp.SVGP(..., likelihood=natvi.likelihoods.by_name({likelihood!r}))."
        )
    if e.task == "multiclass":
        params = {"multiclass": likelihood, **params}
    elif e.task in ("regression", "counts"):
        params = {"likelihood": likelihood, **params}
    return _CLASSES[e.estimator](**params)


def load(path: str | Path) -> SparseGPBase:
    """Load an estimator saved with ``estimator.save(path)`` (``weights_only`` loading).

    Raises ``ValueError`` naming the file and what is wrong with it if it is missing, empty,
    truncated, corrupt, of another kind, or an incomplete natvi model file.
    """
    path = Path(path)
    blob = load_torch_file(path, "natvi model file", _ADVICE)
    if blob.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a natvi model file (format {blob.get('format')!r}, expected "
            f"{FORMAT!r}); {_ADVICE}"
        )
    name = blob.get("estimator")
    if name not in _CLASSES:
        raise ValueError(
            f"{path}: unknown estimator {name!r} (known: {', '.join(_CLASSES)}); {_ADVICE}"
        )
    missing = [k for k in ("params", "fitted", "state_dict") if not isinstance(blob.get(k), dict)]
    if missing:
        raise ValueError(
            f"{path}: the model file is incomplete (no {', '.join(missing)}); {_ADVICE}"
        )
    try:
        # files written before ``ard`` became a setting (default False) hold ARD kernels
        est = _CLASSES[name](**{"ard": True, **blob["params"]})
        est._restore(blob["fitted"], blob["state_dict"])
    except KeyError as err:
        raise ValueError(
            f"{path}: the model file is incomplete (its fitted state lacks {err.args[0]!r}); "
            f"{_ADVICE}"
        ) from None
    except (TypeError, ValueError, RuntimeError, IndexError) as err:
        raise ValueError(
            f"{path}: the model file is damaged: its contents do not make a {name} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); {_ADVICE}"
        ) from None
    return est
