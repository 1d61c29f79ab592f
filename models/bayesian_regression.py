"""Pyro's introductory Bayesian regression, as a Pyro model on data generated here.

``a ~ N(0, 10²)``, ``b ~ N(0, 1)``, ``sigma ~ Uniform(0, 10)``,
``y_n ~ N(a + b x_n, sigma²)`` — the three-latent regression of Pyro's "Bayesian regression"
tutorial (there on the terrain-ruggedness data, here on 170 points drawn from the model with
``a = 1.5, b = −0.6, sigma = 0.9`` and standardised ``x``, so nothing is downloaded).
The latent ``sigma`` lives on a bounded interval: Pyro's guides see ``logit(sigma / 10)``.

Example:
    >>> from models import bayesian_regression
    >>> problem = bayesian_regression.build()
    >>> problem.model(problem.x, problem.y)          # sites "a", "b", "sigma"
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

__all__ = ["RegressionProblem", "regression_model", "build", "TRUE"]

TRUE = {"a": 1.5, "b": -0.6, "sigma": 0.9}


def regression_model(x: Tensor, y: Tensor | None = None) -> Tensor:
    """Pyro model: ``a ~ N(0, 10)``, ``b ~ N(0, 1)``, ``sigma ~ U(0, 10)``, ``y ~ N(a + b x, σ)``."""
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    a = pyro.sample("a", dist.Normal(zero, 10.0))
    b = pyro.sample("b", dist.Normal(zero, 1.0))
    sigma = pyro.sample("sigma", dist.Uniform(zero, 10.0 + zero))
    # latents are scalars, or [P, 1] under vectorised particles (left of the data plate)
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(a + b * x, sigma), obs=y)


@dataclass
class RegressionProblem:
    """The data for :func:`regression_model`: ``x [N]`` (standardised), ``y [N]``."""

    name: str
    x: Tensor
    y: Tensor

    def model(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The Pyro model (the same for every problem; kept for symmetry with the others)."""
        return regression_model(x, y)


def build(num_data: int = 170, seed: int = 0, dtype: torch.dtype = torch.float64):
    """``num_data`` points ``y = a + b x + sigma ε`` with the :data:`TRUE` values, ``x`` standardised.

    Args:
        num_data: N (170 as in Pyro's tutorial).
        seed: of the generator that draws ``x`` and ``ε``.
        dtype: of the tensors.
    """
    if int(num_data) < 3:
        raise ValueError(f"num_data must be at least 3, got {num_data!r}.")
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(int(num_data), generator=g, dtype=dtype)
    x = (x - x.mean()) / x.std()
    eps = torch.randn(int(num_data), generator=g, dtype=dtype)
    y = TRUE["a"] + TRUE["b"] * x + TRUE["sigma"] * eps
    return RegressionProblem("bayesian_regression", x, y)
