"""Gamma and Exponential families, with closed-form natural gradients.

Gamma with shape ``α > 0`` and rate ``β > 0``, ``p(x) = βᵅ x^{α−1} e^{−βx} / Γ(α)`` on ``x > 0``.
Writing ``log p(x) = (α − 1) log x − β x − (log Γ(α) − α log β)`` gives

- sufficient statistics ``T(x) = (log x, x)``, natural ``θ = (θ1, θ2) = (α − 1, −β)``
  (domain ``θ1 > −1``, ``θ2 < 0``), base measure 1;
- log-partition ``A(θ) = log Γ(θ1 + 1) − (θ1 + 1) log(−θ2)``;
- mean ``μ = ∇A = (E log x, E x) = (ψ(α) − log β, α / β)`` (ψ the digamma function);
- Fisher ``F = ∇²A = [[ψ′(α), 1/β], [1/β, α/β²]]``, ``det F = (α ψ′(α) − 1) / β² > 0``, so the
  natural gradient is the 2 × 2 inverse applied per element, ``O(1)``:
  ``F⁻¹ g = ((α g1 − β g2), (−β g1 + β² ψ′(α) g2)) / (α ψ′(α) − 1)``.

The inverse map ``μ → θ`` has no closed form: ``α`` solves ``log α − ψ(α) = log μ2 − μ1``
(positive by Jensen's inequality), found by Newton's method in ``log α`` from Minka's
initialisation; its derivative is supplied by the implicit-function theorem (one Newton step
taken on the converged, detached root), so autodiff through :meth:`Gamma.to_natural` is exact.

Exponential with rate ``λ > 0`` (the Gamma with ``α = 1``), ``p(x) = λ e^{−λx}``: ``T(x) = x``,
``θ = −λ < 0``, ``A(θ) = −log(−θ)``, ``μ = E x = −1/θ``, ``F = 1/θ² = μ²``, natural gradient
``θ² g``.

Parameters of the Gamma are tuples ``(θ1 [...], θ2 [...])``; the Exponential's a tensor ``[...]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from natvi._validation import check_same_shape
from natvi.expfam._domain import require
from natvi.expfam.base import ExponentialFamily

__all__ = ["Gamma", "Exponential"]

_NEWTON_MAX_ITERS = 100


def _shape_from_log_ratio(c: Tensor) -> Tensor:
    """Solve ``log α − ψ(α) = c`` for ``α`` (``c > 0``), differentiable in ``c``."""
    c0 = c.detach()
    alpha = (3.0 - c0 + torch.sqrt((c0 - 3.0).square() + 24.0 * c0)) / (12.0 * c0)
    u = torch.log(alpha)
    tol = 4 * torch.finfo(c.dtype).eps
    for _ in range(_NEWTON_MAX_ITERS):
        a = torch.exp(u)
        f = u - torch.digamma(a) - c0
        step = f / (1.0 - a * torch.polygamma(1, a))
        u = u - step
        if bool((step.abs() <= tol * u.abs().clamp_min(1.0)).all()):
            break
    a = torch.exp(u)
    # One Newton step on the detached root: value unchanged, derivative = implicit derivative.
    return a - (torch.log(a) - torch.digamma(a) - c) / (1.0 / a - torch.polygamma(1, a))


class Gamma(ExponentialFamily):
    """Gamma family (shape ``α``, rate ``β``), ``θ = (α − 1, −β)``, ``μ = (E log x, E x)``.

    Example:
        >>> fam = Gamma()
        >>> theta = fam.from_shape_rate(torch.tensor(2.0), torch.tensor(3.0))   # (1, −3)
        >>> fam.to_mean(theta)                      # (ψ(2) − log 3, 2/3)
        >>> fam.natural_gradient(theta, (torch.tensor(1.0), torch.tensor(0.0)))
    """

    def _check_theta(self, theta: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        theta1, theta2 = theta
        check_same_shape("theta1", theta1, "theta2", theta2)
        require(theta1 > -1, "theta1", theta1, "greater than −1 (shape α = θ1 + 1 > 0)", "Gamma")
        require(theta2 < 0, "theta2", theta2, "negative (rate β = −θ2 > 0)", "Gamma")
        return theta1 + 1.0, -theta2

    def log_partition(self, theta: tuple[Tensor, Tensor]) -> Tensor:
        theta1, theta2 = theta
        return torch.lgamma(theta1 + 1.0) - (theta1 + 1.0) * torch.log(-theta2)

    def to_shape_rate(self, theta: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """``(θ1, θ2) -> (α, β) = (θ1 + 1, −θ2)``."""
        return self._check_theta(theta)

    def from_shape_rate(self, shape: Tensor, rate: Tensor) -> tuple[Tensor, Tensor]:
        """``(α, β) -> (θ1, θ2) = (α − 1, −β)``."""
        check_same_shape("shape", shape, "rate", rate)
        require(shape > 0, "shape", shape, "positive", "Gamma")
        require(rate > 0, "rate", rate, "positive", "Gamma")
        return shape - 1.0, -rate

    def to_mean(self, theta: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        alpha, beta = self._check_theta(theta)
        return torch.digamma(alpha) - torch.log(beta), alpha / beta

    def to_natural(self, mu: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        mu1, mu2 = mu
        check_same_shape("mu1", mu1, "mu2", mu2)
        require(mu2 > 0, "mu2", mu2, "positive (μ2 = E x)", "Gamma")
        c = torch.log(mu2) - mu1
        require(c > 0, "mu1", mu1, "below log(mu2) (Jensen: E log x < log E x)", "Gamma")
        alpha = _shape_from_log_ratio(c)
        return alpha - 1.0, -alpha / mu2

    def natural_gradient(
        self, theta: tuple[Tensor, Tensor], grad_theta: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """The closed-form ``2 × 2`` inverse Fisher per element (module docstring)."""
        alpha, beta = self._check_theta(theta)
        g1, g2 = grad_theta
        trigamma = torch.polygamma(1, alpha)
        det = alpha * trigamma - 1.0
        return (alpha * g1 - beta * g2) / det, beta * (beta * trigamma * g2 - g1) / det

    def fisher_vp(
        self, theta: tuple[Tensor, Tensor], v: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        alpha, beta = self._check_theta(theta)
        v1, v2 = v
        return torch.polygamma(1, alpha) * v1 + v2 / beta, v1 / beta + alpha * v2 / beta.square()


class Exponential(ExponentialFamily):
    """Exponential family with rate ``λ``: ``θ = −λ`` ``[...]``, ``μ = 1/λ``.

    Example:
        >>> fam = Exponential()
        >>> theta = torch.tensor([-2.0], dtype=torch.float64)      # λ = 2
        >>> fam.to_mean(theta)                                     # 0.5
        >>> fam.natural_gradient(theta, torch.ones(1, dtype=torch.float64))   # θ² g = 4
    """

    def log_partition(self, theta: Tensor) -> Tensor:
        return -torch.log(-theta)

    def to_mean(self, theta: Tensor) -> Tensor:
        require(theta < 0, "theta", theta, "negative (rate λ = −θ > 0)", "Exponential")
        return -1.0 / theta

    def to_natural(self, mu: Tensor) -> Tensor:
        require(mu > 0, "mu", mu, "positive (μ = E x = 1/λ)", "Exponential")
        return -1.0 / mu

    def natural_gradient(self, theta: Tensor, grad_theta: Tensor) -> Tensor:
        """``θ² g``."""
        require(theta < 0, "theta", theta, "negative (rate λ = −θ > 0)", "Exponential")
        return theta.square() * grad_theta

    def fisher_vp(self, theta: Tensor, v: Tensor) -> Tensor:
        require(theta < 0, "theta", theta, "negative (rate λ = −θ > 0)", "Exponential")
        return v / theta.square()
