"""Breast cancer (Wisconsin diagnostic): binary GP classification on a real dataset.

scikit-learn's bundled set (569 tumours × 30 features, malignant = 0, benign = 1), a 70/30
train/test split, features standardised, Bernoulli (probit) likelihood, ARD RBF kernel.

Example:
    >>> from models import breast_cancer
    >>> problem = breast_cancer.build(num_inducing=30)
"""

from __future__ import annotations

import numpy as np
import torch

from models._problem import SVGP_DEFAULTS, Problem, assemble, check_overrides, split, standardize

__all__ = ["build", "make_data"]

DEFAULTS = {**SVGP_DEFAULTS, "lengthscale": 5.0, "test_fraction": 0.3, "link": "probit"}


def make_data(
    test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X [N_train, 30], y [N_train] in {0, 1}, X_test, y_test)``, features standardised."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X, y, X_test, y_test = split(X, y.astype(float), test_fraction, np.random.default_rng(seed))
    X, X_test = standardize(X, X_test)
    return X, y, X_test, y_test


def build(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> Problem:
    """The breast-cancer SVGP classifier; settings: see ``DEFAULTS``."""
    from natvi.likelihoods import Bernoulli

    s = check_overrides("breast_cancer", overrides, DEFAULTS) | {"seed": seed, "dtype": dtype}
    data = make_data(s["test_fraction"], seed)
    return assemble("breast_cancer", data, Bernoulli(link=s["link"]), s)
