"""Closed-form error of the OU solver's estimates (exact transitions), for tests and plots.

With ``A = Q Λ Qᵀ``, ``a = e^{−λ dt}``, ``s² = κ0 (1 − a²)/λ`` per eigen-coordinate, start
``x0``, burn-in ``B`` and ``N`` averaged steps, the time average ``x̄`` satisfies

    E x̄ − A⁻¹b = Q diag(c) Qᵀ (x0 − A⁻¹b),   c = a^{B+1} (1 − a^N) / ((1 − a) N)
    Cov x̄     = Q diag(v) Qᵀ,
    v = s² [ c² (1 − a^{2B}) / (a² (1 − a²)) + Σ_{m=1}^{N} (1 − a^m)² / ((1 − a) N)² ]

and the final state ``x_{B+N}`` has mean error ``e^{−A t}(x0 − A⁻¹b)``, ``t = dt (B + N)``.
For large ``t`` these approach the continuous-time forms ``(A t)⁻¹ (x0 − A⁻¹b)`` and
``2 κ0 A⁻² / t``. Shapes: ``A [..., n, n]``, ``b, x0 [..., n]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from natvi._linalg import symmetrize

__all__ = [
    "time_average_bias",
    "time_average_covariance",
    "final_state_bias",
    "expected_squared_error",
]


def _eig(A: Tensor) -> tuple[Tensor, Tensor]:
    return torch.linalg.eigh(symmetrize(A))


def _coefficients(lam: Tensor, dt: float, num_samples: int, burnin: int) -> tuple[Tensor, Tensor]:
    """Per eigen-coordinate: ``c`` (bias factor of the average) and ``v / s²``."""
    h, N = lam * dt, num_samples
    one_minus_a = -torch.expm1(-h)
    c = torch.exp(-h * (burnin + 1)) * -torch.expm1(-h * N) / (one_minus_a * N)
    a = torch.exp(-h)
    geo = -torch.expm1(-h * N) / one_minus_a  # Σ_{m=0}^{N−1} a^m
    geo2 = -torch.expm1(-2 * h * N) / -torch.expm1(-2 * h)  # Σ_{m=0}^{N−1} a^{2m}
    sum_sq = N - 2 * a * geo + a * a * geo2
    c_over_a = torch.exp(-h * burnin) * geo / N
    burn = c_over_a**2 * -torch.expm1(-2 * h * burnin) / -torch.expm1(-2 * h)
    return c, burn + sum_sq / (one_minus_a * N) ** 2


def time_average_bias(
    A: Tensor, b: Tensor, x0: Tensor, dt: float, num_samples: int, burnin: int = 0
) -> Tensor:
    """``E x̄ − A⁻¹ b`` ``[..., n]`` for the exact-transition process."""
    lam, Q = _eig(A)
    x_star = (Q @ ((Q.mT @ b.unsqueeze(-1)).squeeze(-1) / lam).unsqueeze(-1)).squeeze(-1)
    c, _ = _coefficients(lam, dt, num_samples, burnin)
    w0 = (Q.mT @ (x0 - x_star).unsqueeze(-1)).squeeze(-1)
    return (Q @ (c * w0).unsqueeze(-1)).squeeze(-1)


def time_average_covariance(
    A: Tensor, dt: float, num_samples: int, burnin: int = 0, noise: float = 1.0
) -> Tensor:
    """``Cov x̄`` ``[..., n, n]`` (independent of ``b`` and ``x0``)."""
    lam, Q = _eig(A)
    _, v = _coefficients(lam, dt, num_samples, burnin)
    s2 = noise * -torch.expm1(-2 * lam * dt) / lam
    return symmetrize((Q * (s2 * v).unsqueeze(-2)) @ Q.mT)


def final_state_bias(A: Tensor, b: Tensor, x0: Tensor, analog_time: float) -> Tensor:
    """``e^{−A t} (x0 − A⁻¹ b)`` ``[..., n]``: the mean error of the last state."""
    lam, Q = _eig(A)
    x_star = (Q @ ((Q.mT @ b.unsqueeze(-1)).squeeze(-1) / lam).unsqueeze(-1)).squeeze(-1)
    w0 = (Q.mT @ (x0 - x_star).unsqueeze(-1)).squeeze(-1)
    return (Q @ (torch.exp(-lam * analog_time) * w0).unsqueeze(-1)).squeeze(-1)


def expected_squared_error(
    A: Tensor,
    b: Tensor,
    x0: Tensor,
    dt: float,
    num_samples: int,
    burnin: int = 0,
    noise: float = 1.0,
) -> Tensor:
    """``E ‖x̄ − A⁻¹ b‖² = ‖bias‖² + tr Cov x̄`` ``[...]``."""
    bias = time_average_bias(A, b, x0, dt, num_samples, burnin)
    cov = time_average_covariance(A, dt, num_samples, burnin, noise)
    return (bias * bias).sum(-1) + cov.diagonal(dim1=-2, dim2=-1).sum(-1)
