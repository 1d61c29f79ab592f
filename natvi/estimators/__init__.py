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

import torch

from natvi.estimators._base import FORMAT, SparseGPBase, kmeans_inducing_points
from natvi.estimators.classifier import SparseGPClassifier
from natvi.estimators.regressors import SparseGPCountRegressor, SparseGPRegressor

__all__ = [
    "SparseGPClassifier",
    "SparseGPRegressor",
    "SparseGPCountRegressor",
    "kmeans_inducing_points",
    "make_estimator",
    "load",
]

_CLASSES = {c.__name__: c for c in (SparseGPClassifier, SparseGPRegressor, SparseGPCountRegressor)}


def make_estimator(likelihood: str, **params: Any) -> SparseGPBase:
    """The estimator for a likelihood name: ``bernoulli``/``softmax`` → classifier,
    ``gaussian``/``studentt`` → :class:`SparseGPRegressor`, ``poisson`` → count regressor."""
    if likelihood in ("bernoulli", "softmax"):
        return SparseGPClassifier(**params)
    if likelihood in ("gaussian", "studentt"):
        return SparseGPRegressor(likelihood=likelihood, **params)
    if likelihood == "poisson":
        return SparseGPCountRegressor(**params)
    raise ValueError(
        f"unknown likelihood {likelihood!r}; choose bernoulli, softmax, gaussian, studentt or "
        "poisson."
    )


def load(path: str | Path) -> SparseGPBase:
    """Load an estimator saved with ``estimator.save(path)`` (``weights_only`` loading).

    Raises ``ValueError`` if the file is not a natvi estimator file.
    """
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(
            f"{path}: not a natvi model file ({type(err).__name__}); create one with "
            "'natvi fit' or estimator.save(path)."
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or blob.get(
        "estimator"
    ) not in _CLASSES:
        raise ValueError(
            f"{path}: not a natvi model file (format {FORMAT!r} expected); create one with "
            "'natvi fit' or estimator.save(path)."
        )
    est = _CLASSES[blob["estimator"]](**blob["params"])
    est._restore(blob["fitted"], blob["state_dict"])
    return est
