"""Heteroskedastic regression: two latent GPs, one for the mean and one for the log noise scale.

Inputs ``x ~ U(-4, 4)``, ``y = f(x) + exp(g(x)) ε`` with ``f(x) = sin(1.5 x)`` and
``g(x) = -1.5 + 0.4 x`` (noise grows from left to right). Likelihood
``natvi.likelihoods.HeteroskedasticGaussian`` (latent 0 the mean, latent 1 the log scale).
``problem.truth`` holds ``f`` and ``g`` at the test inputs.

Example:
    >>> from models import heteroskedastic
    >>> problem = heteroskedastic.build(num_data=300)
"""

from __future__ import annotations

import numpy as np
import torch

from models._problem import SVGP_DEFAULTS, Problem, assemble, check_overrides

__all__ = ["build", "make_data", "true_mean", "true_log_scale"]

DEFAULTS = {**SVGP_DEFAULTS, "num_data": 500, "num_inducing": 30, "num_test": 300}


def true_mean(x: np.ndarray) -> np.ndarray:
    """``f(x) = sin(1.5 x)``."""
    return np.sin(1.5 * x)


def true_log_scale(x: np.ndarray) -> np.ndarray:
    """``g(x) = -1.5 + 0.4 x``, the log of the noise standard deviation."""
    return -1.5 + 0.4 * x


def make_data(
    num_data: int, num_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X [N, 1], y [N], X_test [N*, 1], y_test [N*])``."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-4.0, 4.0, size=(num_data, 1))
    X_test = rng.uniform(-4.0, 4.0, size=(num_test, 1))
    noise = lambda x: np.exp(true_log_scale(x)) * rng.standard_normal(x.shape[0])
    y = true_mean(X[:, 0]) + noise(X[:, 0])
    y_test = true_mean(X_test[:, 0]) + noise(X_test[:, 0])
    return X, y, X_test, y_test


def build(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> Problem:
    """The heteroskedastic two-latent SVGP; settings: see ``DEFAULTS``."""
    from natvi.likelihoods import HeteroskedasticGaussian

    s = check_overrides("heteroskedastic", overrides, DEFAULTS) | {"seed": seed, "dtype": dtype}
    data = make_data(s["num_data"], s["num_test"], seed)
    x_test = data[2][:, 0]
    truth = {
        "f_test": torch.as_tensor(true_mean(x_test), dtype=dtype),
        "log_scale_test": torch.as_tensor(true_log_scale(x_test), dtype=dtype),
    }
    return assemble(
        "heteroskedastic",
        data,
        HeteroskedasticGaussian(),
        s,
        num_latent=2,
        truth=truth,
    )
