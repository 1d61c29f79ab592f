"""Discrete families: Bernoulli, Multinomial and Categorical, with closed-form natural gradients.

Bernoulli ``p(x) = pˣ (1 − p)¹⁻ˣ``, ``x ∈ {0, 1}``, batched over ``[...]``:

- natural ``θ = logit p``, sufficient statistic ``T(x) = x``, ``A(θ) = log(1 + eᶿ)``;
- mean ``μ = p = σ(θ)``, Fisher ``F = p (1 − p)``, natural gradient ``g / (p (1 − p))``.

Multinomial with ``n`` trials over ``K`` classes in **minimal coordinates** (the last class
``K`` is the reference): parameters are ``[..., K−1]``,

- natural ``θ_k = log(p_k / p_K)``, ``T(x) = (x_1, …, x_{K−1})`` (counts),
  ``A(θ) = n log(1 + Σ_k e^{θ_k})``;
- mean ``μ_k = n p_k`` (``k < K``), ``p_K = 1 − Σ_k p_k``;
- Fisher ``F = n (diag p − p pᵀ)`` over the first ``K−1`` classes, whose inverse is, by
  Sherman–Morrison, ``F⁻¹ = (diag(1/p) + 𝟙𝟙ᵀ / p_K) / n``; hence the natural gradient
  ``(F⁻¹ g)_k = (g_k / p_k + Σ_j g_j / p_K) / n`` in ``O(K)``.

Categorical is the Multinomial with ``n = 1`` (``μ = p`` without the last class).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from natvi.expfam._domain import require
from natvi.expfam.base import ExponentialFamily

__all__ = ["Bernoulli", "Multinomial", "Categorical"]


class Bernoulli(ExponentialFamily):
    """Bernoulli family in the logit ``θ = log(p / (1 − p))``; tensors ``[...]``.

    Example:
        >>> fam = Bernoulli()
        >>> theta = torch.tensor([0.0, 2.0], dtype=torch.float64)
        >>> fam.to_mean(theta)                       # probabilities σ(θ)
        >>> fam.natural_gradient(theta, torch.ones(2, dtype=torch.float64))  # g / (p (1 − p))
    """

    def log_partition(self, theta: Tensor) -> Tensor:
        return F.softplus(theta)

    def to_mean(self, theta: Tensor) -> Tensor:
        require(torch.isfinite(theta), "theta", theta, "finite", "Bernoulli")
        return torch.sigmoid(theta)

    def to_natural(self, mu: Tensor) -> Tensor:
        require((mu > 0) & (mu < 1), "mu", mu, "in the open interval (0, 1)", "Bernoulli")
        return torch.log(mu) - torch.log1p(-mu)

    def natural_gradient(self, theta: Tensor, grad_theta: Tensor) -> Tensor:
        """``g / (p (1 − p))`` with ``p = σ(θ)``, written as ``g (2 + eᶿ + e⁻ᶿ)`` (no 0/0)."""
        require(torch.isfinite(theta), "theta", theta, "finite", "Bernoulli")
        return grad_theta * (2.0 + torch.exp(theta) + torch.exp(-theta))

    def fisher_vp(self, theta: Tensor, v: Tensor) -> Tensor:
        p = self.to_mean(theta)
        return p * (1.0 - p) * v


class Multinomial(ExponentialFamily):
    """Multinomial family with ``total_count`` trials in minimal coordinates ``[..., K−1]``.

    The last class is the reference: ``θ_k = log(p_k / p_K)`` for ``k = 1..K−1`` and
    ``μ_k = n p_k``. See the module docstring for the closed-form Fisher inverse.

    Args:
        total_count: the number of trials ``n`` (a positive number).

    Example:
        >>> fam = Multinomial(total_count=10)
        >>> theta = torch.zeros(3, dtype=torch.float64)      # K = 4 classes, all 1/4
        >>> fam.to_mean(theta)                               # (2.5, 2.5, 2.5)
    """

    def __init__(self, total_count: float = 1.0) -> None:
        if not total_count > 0:
            raise ValueError(
                f"Multinomial: total_count must be positive, got {total_count!r}; pass the "
                "number of trials (1 for a Categorical)."
            )
        self.total_count = float(total_count)

    def _check_theta(self, theta: Tensor) -> None:
        if theta.dim() < 1:
            raise ValueError(
                "Multinomial: theta must have shape [..., K−1] (the last class is the "
                "reference and has no parameter); got a scalar."
            )
        require(torch.isfinite(theta), "theta", theta, "finite", type(self).__name__)

    def log_partition(self, theta: Tensor) -> Tensor:
        zero = torch.zeros_like(theta[..., :1])
        return self.total_count * torch.logsumexp(torch.cat([theta, zero], -1), -1)

    def probs(self, theta: Tensor) -> Tensor:
        """All ``K`` class probabilities ``[..., K]`` (the reference class last)."""
        self._check_theta(theta)
        zero = torch.zeros_like(theta[..., :1])
        return torch.softmax(torch.cat([theta, zero], -1), -1)

    def to_mean(self, theta: Tensor) -> Tensor:
        return self.total_count * self.probs(theta)[..., :-1]

    def to_natural(self, mu: Tensor) -> Tensor:
        if mu.dim() < 1:
            raise ValueError("Multinomial: mu must have shape [..., K−1]; got a scalar.")
        p = mu / self.total_count
        p_last = 1.0 - p.sum(-1, keepdim=True)
        name = type(self).__name__
        what = f"positive with sum below total_count = {self.total_count:g} in every row"
        require((p > 0).all(-1, keepdim=True) & (p_last > 0), "mu", mu, what, name)
        return torch.log(p) - torch.log(p_last)

    def natural_gradient(self, theta: Tensor, grad_theta: Tensor) -> Tensor:
        """``(g_k / p_k + Σ_j g_j / p_K) / n`` — Sherman–Morrison on ``n (diag p − p pᵀ)``."""
        p = self.probs(theta)
        nat = grad_theta / p[..., :-1] + grad_theta.sum(-1, keepdim=True) / p[..., -1:]
        return nat / self.total_count

    def fisher_vp(self, theta: Tensor, v: Tensor) -> Tensor:
        p = self.probs(theta)[..., :-1]
        return self.total_count * (p * v - p * (p * v).sum(-1, keepdim=True))


class Categorical(Multinomial):
    """Categorical family over ``K`` classes: ``Multinomial(total_count=1)``, ``θ [..., K−1]``.

    Minimal coordinates with the **last class as reference**: ``θ_k = log(p_k / p_K)``,
    ``μ_k = p_k`` for ``k < K``; ``p_K = 1 / (1 + Σ_k e^{θ_k})``.

    Example:
        >>> fam = Categorical()
        >>> p = torch.tensor([0.2, 0.3], dtype=torch.float64)   # p_3 = 0.5
        >>> theta = fam.to_natural(p)                            # log(0.2/0.5), log(0.3/0.5)
        >>> fam.natural_gradient(theta, torch.ones(2, dtype=torch.float64))
    """

    def __init__(self) -> None:
        super().__init__(total_count=1.0)
