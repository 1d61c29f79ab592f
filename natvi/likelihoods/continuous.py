"""Likelihoods for real-valued and positive data: Gaussian, Student-t, heteroskedastic Gaussian,
Beta and Gamma.

Positive parameters (noise variance, scale, shape, precision) are held as ``raw_*`` parameters and
mapped through ``softplus`` (:func:`natvi.likelihoods.base.positive`); set them at construction.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from natvi.likelihoods.base import Likelihood, inv_positive, positive

__all__ = ["Gaussian", "StudentT", "HeteroskedasticGaussian", "Beta", "Gamma"]

_LOG_2PI = math.log(2.0 * math.pi)


class Gaussian(Likelihood):
    """``y | f ~ N(f, σ²)``; ``σ² = softplus(raw_noise)`` (learnable). Closed forms throughout.

    ``E_{N(μ, v)}[log p(y | f)] = −½ log(2π σ²) − ((y − μ)² + v) / (2 σ²)``.

    Example:
        >>> lik = Gaussian(noise=0.1)
    """

    conjugate = True

    def __init__(self, noise: float = 1.0, num_gh: int = 20) -> None:
        super().__init__(num_gh)
        self.raw_noise = nn.Parameter(inv_positive(noise, "noise"))

    @property
    def noise(self) -> Tensor:
        """The noise variance ``σ²``."""
        return positive(self.raw_noise)

    def log_prob(self, F: Tensor, y: Tensor) -> Tensor:
        s2 = self.noise
        return -0.5 * (_LOG_2PI + s2.log() + (y - F) ** 2 / s2)

    def conditional_mean(self, F: Tensor) -> Tensor:
        return F

    def conditional_variance(self, F: Tensor) -> Tensor:
        return self.noise.expand_as(F)

    def _variational_expectations(self, f_mean: Tensor, f_var: Tensor, y: Tensor) -> Tensor:
        return self.expectation_terms(f_mean, f_var, y, False)[0]

    def expectation_terms(self, f_mean: Tensor, f_var: Tensor, y: Tensor, grad: bool):
        # E[log p] = −½ (log 2πσ² + ((y − μ)² + v) / σ²):  ∂/∂μ = (y − μ) / σ²,  ∂/∂v = −1 / (2σ²)
        s2 = self.noise
        value = -0.5 * (_LOG_2PI + s2.log() + ((y - f_mean) ** 2 + f_var) / s2)
        if not grad:
            return value, None, None
        return value, (y - f_mean) / s2, (-0.5 / s2).expand_as(f_mean)

    def _predict_log_density(self, f_mean: Tensor, f_var: Tensor, y: Tensor) -> Tensor:
        v = f_var + self.noise
        return -0.5 * (_LOG_2PI + v.log() + (y - f_mean) ** 2 / v)

    def _predict_mean_and_var(self, f_mean: Tensor, f_var: Tensor) -> tuple[Tensor, Tensor]:
        return f_mean, f_var + self.noise


class StudentT(Likelihood):
    """``y | f ~ StudentT(ν, loc=f, scale=s)``; ``ν`` fixed (``df``), ``s = softplus(raw_scale)``.

    Expectations by Gauss–Hermite quadrature (no closed form).
    """

    def __init__(self, df: float = 3.0, scale: float = 1.0, num_gh: int = 20) -> None:
        super().__init__(num_gh)
        if not float(df) > 0:
            raise ValueError(f"df must be positive, got {df}.")
        self.df = float(df)
        self.raw_scale = nn.Parameter(inv_positive(scale, "scale"))

    @property
    def scale(self) -> Tensor:
        return positive(self.raw_scale)

    def log_prob(self, F: Tensor, y: Tensor) -> Tensor:
        nu, s = self.df, self.scale
        const = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
        return const - s.log() - 0.5 * (nu + 1) * torch.log1p(((y - F) / s) ** 2 / nu)

    def conditional_mean(self, F: Tensor) -> Tensor:
        return F

    def conditional_variance(self, F: Tensor) -> Tensor:
        nu = self.df
        v = self.scale**2 * nu / (nu - 2) if nu > 2 else torch.full_like(self.scale, math.inf)
        return v.expand_as(F)


class HeteroskedasticGaussian(Likelihood):
    """Two latents per datum, ``y | f1, f2 ~ N(f1, exp(2 f2))`` (f2 the log standard deviation).

    Closed form: ``E[log p] = −½ log 2π − μ2 − ½ ((y − μ1)² + v1) exp(−2 μ2 + 2 v2)``.
    ``f_mean``, ``f_var`` are ``[N, 2]``.
    """

    num_latent = 2

    def log_prob(self, F: Tensor, y: Tensor) -> Tensor:
        f1, f2 = F[..., 0], F[..., 1]
        return -0.5 * _LOG_2PI - f2 - 0.5 * (y - f1) ** 2 * torch.exp(-2.0 * f2)

    def conditional_mean(self, F: Tensor) -> Tensor:
        return F[..., 0]

    def conditional_variance(self, F: Tensor) -> Tensor:
        return torch.exp(2.0 * F[..., 1])

    def _variational_expectations(self, f_mean: Tensor, f_var: Tensor, y: Tensor) -> Tensor:
        m1, m2 = f_mean[..., 0], f_mean[..., 1]
        v1, v2 = f_var[..., 0], f_var[..., 1]
        return -0.5 * _LOG_2PI - m2 - 0.5 * ((y - m1) ** 2 + v1) * torch.exp(2.0 * (v2 - m2))

    def _predict_mean_and_var(self, f_mean: Tensor, f_var: Tensor) -> tuple[Tensor, Tensor]:
        m1, m2 = f_mean[..., 0], f_mean[..., 1]
        v1, v2 = f_var[..., 0], f_var[..., 1]
        return m1, v1 + torch.exp(2.0 * m2 + 2.0 * v2)


class Beta(Likelihood):
    """``y | f ~ Beta(a, b)`` on (0, 1) with mean ``μ = sigmoid(f)``, ``a = φ μ``, ``b = φ (1 − μ)``.

    ``φ = softplus(raw_precision)`` is the precision (``Var[y|f] = μ(1 − μ)/(φ + 1)``).
    Expectations by Gauss–Hermite quadrature.
    """

    def __init__(self, precision: float = 10.0, num_gh: int = 20) -> None:
        super().__init__(num_gh)
        self.raw_precision = nn.Parameter(inv_positive(precision, "precision"))

    @property
    def precision(self) -> Tensor:
        return positive(self.raw_precision)

    @classmethod
    def _check_support(cls, y: Tensor, what: str, suggest: str) -> None:
        if not bool(((y > 0) & (y < 1)).all()):
            raise ValueError(
                f"{what} must lie strictly inside (0, 1) for the Beta likelihood; got values in "
                f"[{float(y.min()):g}, {float(y.max()):g}]. Clip or rescale the data."
            )

    def log_prob(self, F: Tensor, y: Tensor) -> Tensor:
        phi = self.precision
        a = phi * torch.sigmoid(F)
        b = phi * torch.sigmoid(-F)
        return (
            (a - 1) * y.log() + (b - 1) * torch.log1p(-y)
            + torch.lgamma(phi) - torch.lgamma(a) - torch.lgamma(b)
        )

    def conditional_mean(self, F: Tensor) -> Tensor:
        return torch.sigmoid(F)

    def conditional_variance(self, F: Tensor) -> Tensor:
        mu = torch.sigmoid(F)
        return mu * (1 - mu) / (self.precision + 1)


class Gamma(Likelihood):
    """``y | f ~ Gamma(shape k, scale exp(f))`` on y > 0; ``k = softplus(raw_shape)``.

    Closed form: ``E[log p] = (k − 1) log y − y exp(−μ + v/2) − k μ − log Γ(k)``.
    """

    def __init__(self, shape: float = 1.0, num_gh: int = 20) -> None:
        super().__init__(num_gh)
        self.raw_shape = nn.Parameter(inv_positive(shape, "shape"))

    @property
    def shape(self) -> Tensor:
        return positive(self.raw_shape)

    @classmethod
    def _check_support(cls, y: Tensor, what: str, suggest: str) -> None:
        if not bool((y > 0).all()):
            raise ValueError(
                f"{what} must be strictly positive for the Gamma likelihood; got min "
                f"{float(y.min()):g}."
            )

    def log_prob(self, F: Tensor, y: Tensor) -> Tensor:
        k = self.shape
        return (k - 1) * y.log() - y * torch.exp(-F) - k * F - torch.lgamma(k)

    def conditional_mean(self, F: Tensor) -> Tensor:
        return self.shape * torch.exp(F)

    def conditional_variance(self, F: Tensor) -> Tensor:
        return self.shape * torch.exp(2.0 * F)

    def _variational_expectations(self, f_mean: Tensor, f_var: Tensor, y: Tensor) -> Tensor:
        k = self.shape
        return (k - 1) * y.log() - y * torch.exp(0.5 * f_var - f_mean) - k * f_mean - torch.lgamma(k)

    def _predict_mean_and_var(self, f_mean: Tensor, f_var: Tensor) -> tuple[Tensor, Tensor]:
        k = self.shape
        e1 = torch.exp(f_mean + 0.5 * f_var)  # E[e^f]
        e2 = torch.exp(2.0 * f_mean + 2.0 * f_var)  # E[e^{2f}]
        return k * e1, k * e2 + k**2 * (e2 - e1**2)
