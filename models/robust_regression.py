"""Robust regression: a Student-t likelihood on data with gross outliers.

Inputs ``x ~ U(-3, 3)``, ``y = f(x) + 0.1 ε`` with ``f(x) = sin(2x) + 0.3 x``; a fraction of
the training targets (``outlier_fraction``, default 10 %) is shifted by ``±U(2, 5)``. The test
targets are clean. ``problem.truth["f_test"]`` holds ``f`` at the test inputs.

Example:
    >>> from models import robust_regression
    >>> problem = robust_regression.build(num_data=300)
"""

from __future__ import annotations

import numpy as np
import torch

from models._problem import SVGP_DEFAULTS, Problem, assemble, check_overrides

__all__ = ["build", "make_data", "true_function"]

DEFAULTS = {
    **SVGP_DEFAULTS,
    "num_data": 500,
    "num_inducing": 30,
    "num_test": 300,
    "outlier_fraction": 0.1,
    "df": 4.0,
    "scale": 0.1,
}


def true_function(x: np.ndarray) -> np.ndarray:
    """``f(x) = sin(2x) + 0.3 x``."""
    return np.sin(2.0 * x) + 0.3 * x


def make_data(
    num_data: int, num_test: int, outlier_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X [N, 1], y [N] with outliers, X_test [N*, 1], y_test [N*] clean)``."""
    if not 0.0 <= outlier_fraction < 0.5:
        raise ValueError(f"outlier_fraction must lie in [0, 0.5), got {outlier_fraction}.")
    rng = np.random.default_rng(seed)
    X = rng.uniform(-3.0, 3.0, size=(num_data, 1))
    X_test = rng.uniform(-3.0, 3.0, size=(num_test, 1))
    y = true_function(X[:, 0]) + 0.1 * rng.standard_normal(num_data)
    y_test = true_function(X_test[:, 0]) + 0.1 * rng.standard_normal(num_test)
    out = rng.random(num_data) < outlier_fraction
    y[out] += rng.choice([-1.0, 1.0], out.sum()) * rng.uniform(2.0, 5.0, out.sum())
    return X, y, X_test, y_test


def build(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> Problem:
    """The Student-t SVGP; settings: see ``DEFAULTS``."""
    from natvi.likelihoods import StudentT

    s = check_overrides("robust_regression", overrides, DEFAULTS) | {"seed": seed, "dtype": dtype}
    data = make_data(s["num_data"], s["num_test"], s["outlier_fraction"], seed)
    f_test = torch.as_tensor(true_function(data[2][:, 0]), dtype=dtype)
    params = {"df": s["df"], "scale": s["scale"]}
    return assemble(
        "robust_regression",
        data,
        StudentT(**params),
        s,
        params,
        truth={"f_test": f_test},
    )
