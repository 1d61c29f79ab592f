"""Digits: 10-class GP classification with a softmax likelihood (one latent GP per class).

scikit-learn's bundled 8×8 digits (1797 images × 64 pixels), a 70/30 train/test split, pixels
standardised, ``num_latent = 10`` latent GPs with independent ARD RBF kernels, softmax
likelihood (its expectation by Monte Carlo over the latents, see ``natvi.likelihoods.Softmax``).

Example:
    >>> from models import digits_softmax
    >>> problem = digits_softmax.build(num_inducing=20)
    >>> problem.y.dtype                 # class indices
    torch.int64
"""

from __future__ import annotations

import numpy as np
import torch

from models._problem import SVGP_DEFAULTS, Problem, assemble, check_overrides, split, standardize

__all__ = ["build", "make_data", "NUM_CLASSES"]

NUM_CLASSES = 10
DEFAULTS = {**SVGP_DEFAULTS, "num_inducing": 100, "lengthscale": 8.0, "test_fraction": 0.3}


def make_data(
    test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X [N_train, 64], y [N_train] in {0..9}, X_test, y_test)``, pixels standardised."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y, X_test, y_test = split(X, y, test_fraction, np.random.default_rng(seed))
    X, X_test = standardize(X, X_test)
    return X, y, X_test, y_test


def build(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> Problem:
    """The digits softmax SVGP; settings: see ``DEFAULTS``."""
    from natvi.likelihoods import Softmax

    s = check_overrides("digits_softmax", overrides, DEFAULTS) | {"seed": seed, "dtype": dtype}
    data = make_data(s["test_fraction"], seed)
    return assemble(
        "digits_softmax",
        data,
        Softmax(num_classes=NUM_CLASSES),
        s,
        num_latent=NUM_CLASSES,
    )
