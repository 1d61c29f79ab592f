"""Two moons: binary GP classification with a Bernoulli (probit) likelihood.

``N`` noisy two-moons points (scikit-learn's generator), 80/20 train/test split, inputs
standardised, ``M`` inducing inputs at k-means centres, ARD RBF kernel with a scale.

Example:
    >>> from models import two_moons
    >>> problem = two_moons.build(num_data=500, num_inducing=20)
    >>> elbo = problem.model.elbo(problem.X, problem.y)
"""

from __future__ import annotations

import numpy as np
import torch

from models._problem import SVGP_DEFAULTS, Problem, assemble, check_overrides, split, standardize

__all__ = ["build", "make_data"]

DEFAULTS = {**SVGP_DEFAULTS, "num_data": 5000, "noise": 0.2, "test_fraction": 0.2, "link": "probit"}


def make_data(
    num_data: int, noise: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X [N_train, 2], y [N_train] in {0, 1}, X_test, y_test)``, inputs standardised."""
    from sklearn.datasets import make_moons

    if num_data < 10:
        raise ValueError(f"num_data must be at least 10, got {num_data}.")
    X, y = make_moons(n_samples=num_data, noise=noise, random_state=seed)
    X, y, X_test, y_test = split(X, y.astype(float), test_fraction, np.random.default_rng(seed))
    X, X_test = standardize(X, X_test)
    return X, y, X_test, y_test


def build(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> Problem:
    """The two-moons SVGP classifier; settings: see ``DEFAULTS`` (``num_data`` counts train+test)."""
    from natvi.likelihoods import Bernoulli

    s = check_overrides("two_moons", overrides, DEFAULTS) | {"seed": seed, "dtype": dtype}
    data = make_data(s["num_data"], s["noise"], s["test_fraction"], seed)
    return assemble("two_moons", data, Bernoulli(link=s["link"]), s)
