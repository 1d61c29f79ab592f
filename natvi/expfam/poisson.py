"""Poisson family in the log-rate, with a closed-form natural gradient.

``p(x) = λˣ e^{−λ} / x!``, ``x ∈ {0, 1, …}``, batched over ``[...]``:

- natural ``θ = log λ``, sufficient statistic ``T(x) = x``, ``A(θ) = eᶿ``;
- mean ``μ = λ = eᶿ``, Fisher ``F = eᶿ = λ``, natural gradient ``F⁻¹ g = g e^{−θ} = g / λ``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from natvi.expfam._domain import require
from natvi.expfam.base import ExponentialFamily

__all__ = ["Poisson"]


class Poisson(ExponentialFamily):
    """Poisson family, ``θ = log λ`` ``[...]``.

    Example:
        >>> fam = Poisson()
        >>> theta = torch.log(torch.tensor([0.5, 4.0], dtype=torch.float64))
        >>> fam.to_mean(theta)                                          # the rates λ
        >>> fam.natural_gradient(theta, torch.ones(2, dtype=torch.float64))   # 1 / λ
    """

    def log_partition(self, theta: Tensor) -> Tensor:
        return torch.exp(theta)

    def to_mean(self, theta: Tensor) -> Tensor:
        require(torch.isfinite(theta), "theta", theta, "finite", "Poisson")
        return torch.exp(theta)

    def to_natural(self, mu: Tensor) -> Tensor:
        require(mu > 0, "mu", mu, "positive (a rate λ > 0)", "Poisson")
        return torch.log(mu)

    def natural_gradient(self, theta: Tensor, grad_theta: Tensor) -> Tensor:
        """``g / λ = g e^{−θ}``."""
        require(torch.isfinite(theta), "theta", theta, "finite", "Poisson")
        return grad_theta * torch.exp(-theta)

    def fisher_vp(self, theta: Tensor, v: Tensor) -> Tensor:
        return torch.exp(theta) * v
