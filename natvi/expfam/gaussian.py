"""Gaussian families, full covariance and diagonal (mean-field), batched over ``[...]``.

Full family ``N(m, S)`` on ``R^M``:

- natural      ``θ = (θ1, θ2) = (S⁻¹ m, −½ S⁻¹)``           shapes ``[..., M]``, ``[..., M, M]``
- expectation  ``η = (η1, η2) = (m, S + m mᵀ)``              shapes ``[..., M]``, ``[..., M, M]``
- log-partition ``A(θ) = −¼ θ1ᵀ θ2⁻¹ θ1 − ½ log det(−2 θ2)``, ``∇A = η``, ``∇²A = F``.

Diagonal family: the same with ``θ2``, ``η2`` the diagonals ``[..., M]``
(``θ2 = −1 / (2 s²)``, ``η2 = s² + m²``).

All maps go through Cholesky factors (never an explicit inverse of a non-triangular matrix),
symmetrise what must be symmetric, and keep ``dtype``/``device`` of their inputs. A precision or
covariance that is not positive definite raises ``ValueError`` naming it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from natvi._linalg import cho_inverse, cho_solve_vec, cholesky, symmetrize
from natvi._validation import check_finite, check_same_shape, check_vector_matrix
from natvi.expfam.base import ExponentialFamily

__all__ = [
    "Gaussian",
    "DiagGaussian",
    "natural_to_meancov",
    "meancov_to_natural",
    "natural_to_expectation",
    "expectation_to_natural",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _precision_cholesky(theta1: Tensor, theta2: Tensor) -> Tensor:
    check_vector_matrix("theta1", theta1, "theta2", theta2)
    return cholesky(-2.0 * theta2, "the precision −2·theta2")


def natural_to_meancov(theta1: Tensor, theta2: Tensor) -> tuple[Tensor, Tensor]:
    """``(θ1 [..., M], θ2 [..., M, M]) -> (m [..., M], S [..., M, M])``."""
    L_P = _precision_cholesky(theta1, theta2)
    return cho_solve_vec(theta1, L_P), cho_inverse(L_P)


def meancov_to_natural(m: Tensor, S: Tensor) -> tuple[Tensor, Tensor]:
    """``(m [..., M], S [..., M, M]) -> (θ1 [..., M], θ2 [..., M, M])``."""
    check_vector_matrix("mean", m, "covariance", S)
    L_S = cholesky(S, "the covariance")
    P = cho_inverse(L_S)
    return cho_solve_vec(m, L_S), -0.5 * P


def natural_to_expectation(theta1: Tensor, theta2: Tensor) -> tuple[Tensor, Tensor]:
    """``(θ1, θ2) -> (η1, η2) = (m, S + m mᵀ)``."""
    m, S = natural_to_meancov(theta1, theta2)
    return m, S + m.unsqueeze(-1) * m.unsqueeze(-2)


def expectation_to_natural(eta1: Tensor, eta2: Tensor) -> tuple[Tensor, Tensor]:
    """``(η1, η2) -> (θ1, θ2)``; needs ``η2 − η1 η1ᵀ`` positive definite."""
    check_vector_matrix("eta1", eta1, "eta2", eta2)
    S = eta2 - eta1.unsqueeze(-1) * eta1.unsqueeze(-2)
    L_S = cholesky(S, "the covariance eta2 − eta1·eta1ᵀ")
    P = cho_inverse(L_S)
    return cho_solve_vec(eta1, L_S), -0.5 * P


def _half_logdet(L: Tensor) -> Tensor:
    return L.diagonal(dim1=-2, dim2=-1).log().sum(-1)


class Gaussian(ExponentialFamily):
    """Full-covariance Gaussian family; parameters are tuples ``(θ1, θ2)`` / ``(η1, η2)``.

    Example:
        >>> fam = Gaussian()
        >>> theta = meancov_to_natural(torch.zeros(3), torch.eye(3))
        >>> eta1, eta2 = fam.to_mean(theta)          # (m, S + m mᵀ) = (0, I)
    """

    def log_partition(self, theta: tuple[Tensor, Tensor]) -> Tensor:
        """``A(θ) = ½ θ1ᵀ P⁻¹ θ1 − ½ log det P`` with ``P = −2 θ2``; shape ``[...]``."""
        theta1, theta2 = theta
        L_P = _precision_cholesky(theta1, theta2)
        m = cho_solve_vec(theta1, L_P)
        return 0.5 * (theta1 * m).sum(-1) - _half_logdet(L_P)

    def to_mean(self, theta: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return natural_to_expectation(*theta)

    def to_natural(self, mu: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return expectation_to_natural(*mu)

    def project_tangent(self, v: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Tangents of ``θ2`` / ``η2`` live in the symmetric matrices."""
        return v[0], symmetrize(v[1])

    def kl(self, theta_q: tuple[Tensor, Tensor], theta_p: tuple[Tensor, Tensor]) -> Tensor:
        """``KL(q ‖ p)`` for members given in natural parameters; shape ``[...]``."""
        L_q = _precision_cholesky(*theta_q)
        L_p = _precision_cholesky(*theta_p)
        m_q = cho_solve_vec(theta_q[0], L_q)
        m_p = cho_solve_vec(theta_p[0], L_p)
        S_q = cho_inverse(L_q)
        P_p = -2.0 * symmetrize(theta_p[1])
        d = m_p - m_q
        trace = (P_p * S_q).sum((-2, -1))
        maha = (d * (P_p @ d.unsqueeze(-1)).squeeze(-1)).sum(-1)
        M = theta_q[0].shape[-1]
        return 0.5 * (trace + maha - M) + _half_logdet(L_q) - _half_logdet(L_p)

    def entropy(self, theta: tuple[Tensor, Tensor]) -> Tensor:
        """Differential entropy ``½ M (1 + log 2π) + ½ log det S``; shape ``[...]``."""
        L_P = _precision_cholesky(*theta)
        M = theta[0].shape[-1]
        return 0.5 * M * (1.0 + _LOG_2PI) - _half_logdet(L_P)

    def sample(
        self,
        theta: tuple[Tensor, Tensor],
        num_samples: int,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw ``[num_samples, ..., M]`` samples as ``m + L_P⁻ᵀ ε`` (``P = L_P L_Pᵀ``)."""
        theta1, theta2 = theta
        L_P = _precision_cholesky(theta1, theta2)
        m = cho_solve_vec(theta1, L_P)
        eps = torch.randn(
            (num_samples, *theta1.shape),
            generator=generator,
            dtype=theta1.dtype,
            device=theta1.device,
        )
        z = torch.linalg.solve_triangular(L_P.mT, eps.unsqueeze(-1), upper=True).squeeze(-1)
        return m + z

    def to_meancov(self, theta: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return natural_to_meancov(*theta)

    def from_meancov(self, m: Tensor, S: Tensor) -> tuple[Tensor, Tensor]:
        return meancov_to_natural(m, S)


def _check_diag(theta1: Tensor, theta2: Tensor) -> Tensor:
    check_same_shape("theta1", theta1, "theta2", theta2)
    prec = -2.0 * theta2
    _check_positive("the precision −2·theta2", prec)
    return prec


def _check_positive(name: str, x: Tensor) -> None:
    if not bool((x > 0).all()):
        check_finite(name, x)
        raise ValueError(
            f"{name} must be positive in every entry (smallest is {float(x.min()):.3g}). Pass "
            "valid variances; if this came from an optimisation step, use a smaller step size."
        )


class DiagGaussian(ExponentialFamily):
    """Diagonal (mean-field) Gaussian family; ``θ2`` and ``η2`` are diagonals ``[..., M]``.

    Example:
        >>> fam = DiagGaussian()
        >>> theta = fam.from_meancov(torch.zeros(3), torch.ones(3))   # variances, not a matrix
    """

    def log_partition(self, theta: tuple[Tensor, Tensor]) -> Tensor:
        theta1, theta2 = theta
        prec = _check_diag(theta1, theta2)
        return (0.5 * theta1.square() / prec - 0.5 * prec.log()).sum(-1)

    def to_mean(self, theta: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        m, var = self.to_meancov(theta)
        return m, var + m.square()

    def to_natural(self, mu: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        eta1, eta2 = mu
        check_same_shape("eta1", eta1, "eta2", eta2)
        return self.from_meancov(eta1, eta2 - eta1.square())

    def kl(self, theta_q: tuple[Tensor, Tensor], theta_p: tuple[Tensor, Tensor]) -> Tensor:
        m_q, v_q = self.to_meancov(theta_q)
        m_p, v_p = self.to_meancov(theta_p)
        return 0.5 * ((v_q + (m_p - m_q).square()) / v_p - 1.0 + v_p.log() - v_q.log()).sum(-1)

    def entropy(self, theta: tuple[Tensor, Tensor]) -> Tensor:
        prec = _check_diag(*theta)
        return (0.5 * (1.0 + _LOG_2PI) - 0.5 * prec.log()).sum(-1)

    def sample(
        self,
        theta: tuple[Tensor, Tensor],
        num_samples: int,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        m, var = self.to_meancov(theta)
        eps = torch.randn(
            (num_samples, *m.shape), generator=generator, dtype=m.dtype, device=m.device
        )
        return m + var.sqrt() * eps

    def to_meancov(self, theta: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """``(θ1, θ2) -> (m, s²)``, both ``[..., M]``."""
        theta1, theta2 = theta
        prec = _check_diag(theta1, theta2)
        return theta1 / prec, 1.0 / prec

    def from_meancov(self, m: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        """``(m, s²) -> (θ1, θ2)``, both ``[..., M]``."""
        check_same_shape("mean", m, "variance", var)
        _check_positive("the variance", var)
        return m / var, -0.5 / var
