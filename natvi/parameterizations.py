"""Parameterisations ξ of the Gaussian variational family and their maps ξ ↔ θ.

A parameterisation is a pair of maps between its own coordinates ``ξ = (ξ1, ξ2)`` and the natural
parameters ``θ = (θ1, θ2)`` of the Gaussian (``θ1 = S⁻¹ m``, ``θ2 = −½ S⁻¹``). That is all natvi
needs to compute exact natural gradients in ξ (see :func:`natvi.natural_gradient`): a user
subclass that defines :meth:`Parameterization.to_natural` and
:meth:`Parameterization.from_natural` works everywhere a built-in does.

Built-ins, full covariance (``ξ1 [..., M]``, ``ξ2 [..., M, M]``):

==================  ==================  ===============================================
class               ξ                   relation
==================  ==================  ===============================================
``Natural``         ``(θ1, θ2)``        identity (θ2 symmetric, negative definite)
``Expectation``     ``(η1, η2)``        ``η1 = m``, ``η2 = S + m mᵀ``
``MeanCholesky``    ``(m, L)``          ``S = L Lᵀ``, L lower triangular, positive diagonal
``NaturalTril``     ``(θ1, T)``         ``θ2 = −½ TᵀT``, T lower triangular, positive diagonal
==================  ==================  ===============================================

Diagonal (mean-field) family, every ``ξ`` of shape ``[..., M]``: ``DiagNatural`` ``(θ1, θ2)``,
``DiagExpectation`` ``(m, s² + m²)``, ``DiagMeanLogScale`` ``(m, log s)``.

Triangular factors are taken with a positive diagonal, the canonical choice: ``from_natural``
returns it, and :func:`natvi.natural_gradient` evaluates there.

Example — a new parameterisation, mean and Cholesky factor of the precision::

    class MeanPrecisionCholesky(Parameterization):
        names = ("m", "L_P")
        def to_natural(self, m, L_P):
            P = L_P.tril() @ L_P.tril().mT
            return (P @ m.unsqueeze(-1)).squeeze(-1), -0.5 * P
        def from_natural(self, theta1, theta2):
            m, _ = natural_to_meancov(theta1, theta2)
            return m, torch.linalg.cholesky(-2 * theta2)
"""

from __future__ import annotations

import torch
from torch import Tensor

from natvi._linalg import (
    cho_inverse,
    cho_solve_vec,
    cholesky,
    cholesky_failed,
    cholesky_inverse,
    symmetrize,
)
from natvi._moments import (
    _NaturalMoments,
    _round_trip_ok,
    precision,
    recorded_expectation_gradient,
    remember_factor,
)
from natvi._validation import all_finite, check_finite
from natvi.expfam.base import ExponentialFamily
from natvi.expfam.gaussian import (
    DiagGaussian,
    Gaussian,
    expectation_to_natural,
    natural_to_expectation,
    natural_to_meancov,
)

__all__ = [
    "Parameterization",
    "DiagParameterization",
    "Natural",
    "Expectation",
    "MeanCholesky",
    "NaturalTril",
    "DiagNatural",
    "DiagExpectation",
    "DiagMeanLogScale",
    "BUILTIN",
    "recorded_expectation_gradient",
]


class Parameterization:
    """A coordinate system ξ on the full-covariance Gaussian family.

    Subclasses define :meth:`to_natural` and :meth:`from_natural`; everything else (expectation
    maps, initialisation from a prior, the push-forward used by natural gradients) is derived.
    ``names`` labels the coordinates (used for ``nn.Parameter`` names in models).
    """

    family: ExponentialFamily = Gaussian()
    names: tuple[str, ...] = ("xi1", "xi2")
    constrained: bool = False
    """ξ holds a precision or covariance directly, so an ordinary gradient step (Adam, SGD) can
    leave its domain; only natural-gradient steps (which back off) may update it."""
    exact_steps: bool = False
    """The plain natural step needs no loss check: true for full natural coordinates, where the
    γ ≤ 1 step is a convex combination of precisions and γ = 1 is exact for conjugate models
    (see :meth:`natvi.optim.safeguards.Safeguard.is_monotone`)."""
    natural_coordinates: bool = False
    """ξ are the natural parameters θ themselves (what the Riemannian iBLR step works in)."""

    @property
    def natural_chart(self) -> Parameterization:
        """The natural coordinates θ of the same family (:class:`Natural` or
        :class:`DiagNatural`): where natural steps are linear and their domain is checked."""
        return DiagNatural() if self.diagonal else Natural()

    def in_domain(self, *xi: Tensor) -> bool:
        """Whether ξ describes a Gaussian that the next natural-gradient step can work with.

        Checks that ξ and ``θ = to_natural(ξ)`` are finite, ``−2 θ2`` is positive definite, and
        the expectation parameters ``η`` map back to θ (``η2 − η1 η1ᵀ`` positive definite in
        working precision — a variance that underflows against ``m²`` fails here). Two Cholesky
        factorisations of ``M × M`` matrices; no gradient is taken. Override to declare a
        narrower domain.
        """
        # (natural coordinates: a NaN or an infinity in θ fails the checks below — the Cholesky
        # of P, or the round trip, whose fallback checks finiteness itself — so no pass first)
        if not self.natural_coordinates and not all_finite(*xi):
            return False
        try:  # (natural coordinates are θ up to θ2's symmetric part, which P takes below)
            theta1, theta2 = xi if self.natural_coordinates else self.to_natural(*xi)
        except ValueError:
            return False
        if self.diagonal:
            var = -0.5 / theta2
            m = theta1 * var
            ok = bool((theta2 < 0).all()) and bool(((var + m * m) - m * m > 0).all())
            return ok and all_finite(m)
        P = precision(theta2)
        L_P, info = torch.linalg.cholesky_ex(P)
        if cholesky_failed(info):
            return False
        S, m = cholesky_inverse(L_P), cho_solve_vec(theta1, L_P)  # (no derivative taken here)
        ok = _round_trip_ok(P, S, m)  # (False for a non-finite S or m: the fallback checks)
        if ok and self.natural_coordinates:  # only Natural's forward pass reads it
            remember_factor(theta1, theta2, L_P, S, m)
        return ok

    def to_natural(self, *xi: Tensor) -> tuple[Tensor, Tensor]:
        """``ξ -> (θ1 [..., M], θ2 [..., M, M])``."""
        raise NotImplementedError(f"{type(self).__name__} must define to_natural(*xi)")

    def from_natural(self, theta1: Tensor, theta2: Tensor) -> tuple[Tensor, ...]:
        """``(θ1, θ2) -> ξ``, the inverse of :meth:`to_natural`."""
        raise NotImplementedError(f"{type(self).__name__} must define from_natural(theta1, theta2)")

    @property
    def diagonal(self) -> bool:
        """Whether this parameterises the diagonal (mean-field) family."""
        return isinstance(self.family, DiagGaussian)

    def to_expectation(self, *xi: Tensor) -> tuple[Tensor, Tensor]:
        """``ξ -> (η1, η2)``."""
        return self.family.to_mean(self.to_natural(*xi))

    def from_expectation(self, eta1: Tensor, eta2: Tensor) -> tuple[Tensor, ...]:
        """``(η1, η2) -> ξ``; override where a direct map is cheaper or more accurate."""
        return self.from_natural(*self.family.to_natural((eta1, eta2)))

    def to_meancov(self, *xi: Tensor) -> tuple[Tensor, Tensor]:
        """``ξ -> (m, S)`` (``S`` the variances ``[..., M]`` for the diagonal family)."""
        return self.family.to_meancov(self.to_natural(*xi))

    def to_moments(self, *xi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``ξ -> (m, S, log det S [...])``, what a variational model needs of q per step."""
        m, S = self.to_meancov(*xi)
        if self.diagonal:
            return m, S, S.log().sum(-1)
        L_S = cholesky(S, "the variational covariance S")
        return m, S, 2.0 * L_S.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def from_meancov(self, mean: Tensor, cov: Tensor) -> tuple[Tensor, ...]:
        """``(m, S) -> ξ`` (``S`` the variances ``[..., M]`` for the diagonal family)."""
        check_finite("mean", mean)
        check_finite("cov", cov)
        return self.from_natural(*self.family.from_meancov(mean, cov))

    def from_prior(self, mean: Tensor, cov: Tensor) -> tuple[Tensor, ...]:
        """Initial ξ equal to a prior ``N(mean, cov)``; e.g. ``(0, I)`` for a whitened GP."""
        return self.from_meancov(mean, cov)

    def push_forward(
        self, theta: tuple[Tensor, Tensor], tangent: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, ...]:
        """Map a tangent vector at θ to ξ-coordinates: ``(∂ξ/∂θ) v``, one JVP of ``from_natural``."""
        _, out = torch.func.jvp(self.from_natural, tuple(theta), tuple(tangent))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class DiagParameterization(Parameterization):
    """A coordinate system on the diagonal Gaussian family; ``θ2`` is the diagonal ``[..., M]``."""

    family: ExponentialFamily = DiagGaussian()


def _reverse_cholesky(P: Tensor, name: str) -> Tensor:
    """Lower-triangular ``T`` with ``TᵀT = P`` (a Cholesky factor taken in reversed order)."""
    C = cholesky(P.flip(-2, -1), name)
    return C.mT.flip(-2, -1)


def _check_triangular_diag(name: str, L: Tensor) -> None:
    if not bool((L.diagonal(dim1=-2, dim2=-1) != 0).all()):
        raise ValueError(
            f"{name} has a zero on its diagonal, so the matrix it factorises is singular; "
            "use a smaller step size or re-initialise from the prior."
        )


class Natural(Parameterization):
    """``ξ = (θ1, θ2) = (S⁻¹ m, −½ S⁻¹)``. Natural gradients here need no Jacobian product.

    :meth:`to_moments` is one Cholesky of the precision with a closed-form backward pass that
    also yields ``∇_η L``, the natural gradient (see :func:`recorded_expectation_gradient`).
    """

    names = ("theta1", "theta2")
    constrained = exact_steps = natural_coordinates = True

    def to_moments(self, theta1: Tensor, theta2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if type(self).to_natural is not Natural.to_natural:
            return super().to_moments(theta1, theta2)
        return _NaturalMoments.apply(theta1, theta2)

    def to_meancov(self, theta1: Tensor, theta2: Tensor) -> tuple[Tensor, Tensor]:
        if type(self).to_natural is not Natural.to_natural:
            return super().to_meancov(theta1, theta2)
        m, S, _ = _NaturalMoments.apply(theta1, theta2)
        return m, S

    def to_natural(self, theta1: Tensor, theta2: Tensor) -> tuple[Tensor, Tensor]:
        return theta1, symmetrize(theta2)

    def from_natural(self, theta1: Tensor, theta2: Tensor) -> tuple[Tensor, Tensor]:
        return theta1, symmetrize(theta2)

    def from_expectation(self, eta1: Tensor, eta2: Tensor) -> tuple[Tensor, Tensor]:
        return expectation_to_natural(eta1, eta2)

    def push_forward(self, theta, tangent):
        return tuple(tangent)


class Expectation(Parameterization):
    """``ξ = (η1, η2) = (m, S + m mᵀ)``."""

    names = ("eta1", "eta2")
    constrained = True

    def to_natural(self, eta1: Tensor, eta2: Tensor) -> tuple[Tensor, Tensor]:
        return expectation_to_natural(eta1, symmetrize(eta2))

    def from_natural(self, theta1: Tensor, theta2: Tensor) -> tuple[Tensor, Tensor]:
        return natural_to_expectation(theta1, theta2)

    def to_expectation(self, eta1: Tensor, eta2: Tensor) -> tuple[Tensor, Tensor]:
        return eta1, symmetrize(eta2)

    def from_expectation(self, eta1: Tensor, eta2: Tensor) -> tuple[Tensor, Tensor]:
        return eta1, symmetrize(eta2)


class MeanCholesky(Parameterization):
    """``ξ = (m, L)`` with ``S = L Lᵀ`` (GPflow's "meanvarsqrt", GPyTorch's Cholesky)."""

    names = ("mean", "scale_tril")

    def to_natural(self, m: Tensor, L: Tensor) -> tuple[Tensor, Tensor]:
        L = L.tril()
        _check_triangular_diag("scale_tril", L)
        P = cho_inverse(L)
        return (P @ m.unsqueeze(-1)).squeeze(-1), -0.5 * P

    def from_natural(self, theta1: Tensor, theta2: Tensor) -> tuple[Tensor, Tensor]:
        m, S = natural_to_meancov(theta1, theta2)
        return m, cholesky(S, "the covariance")

    def to_meancov(self, m: Tensor, L: Tensor) -> tuple[Tensor, Tensor]:
        L = L.tril()
        return m, L @ L.mT

    def to_moments(self, m: Tensor, L: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        L = L.tril()
        logdet = 2.0 * L.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)
        return m, L @ L.mT, logdet

    def from_expectation(self, eta1: Tensor, eta2: Tensor) -> tuple[Tensor, Tensor]:
        S = eta2 - eta1.unsqueeze(-1) * eta1.unsqueeze(-2)
        return eta1, cholesky(S, "the covariance eta2 − eta1·eta1ᵀ")

    def from_meancov(self, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
        check_finite("mean", mean)
        check_finite("cov", cov)
        L = cholesky(cov, "cov")
        if mean.shape != L.shape[:-1]:
            raise ValueError(f"mean has shape {tuple(mean.shape)}; cov needs [..., M, M] to match.")
        return mean, L


class NaturalTril(Parameterization):
    """``ξ = (θ1, T)`` with ``θ2 = −½ TᵀT``, T lower triangular (GPyTorch's "Tril" natural)."""

    names = ("theta1", "tril")

    def to_natural(self, theta1: Tensor, T: Tensor) -> tuple[Tensor, Tensor]:
        T = T.tril()
        return theta1, -0.5 * (T.mT @ T)

    def from_natural(self, theta1: Tensor, theta2: Tensor) -> tuple[Tensor, Tensor]:
        return theta1, _reverse_cholesky(-2.0 * theta2, "the precision −2·theta2")


class DiagNatural(DiagParameterization):
    """Diagonal family, ``ξ = (θ1, θ2) = (m / s², −1 / (2 s²))``, both ``[..., M]``."""

    names = ("theta1", "theta2")
    constrained = natural_coordinates = True

    def to_natural(self, theta1: Tensor, theta2: Tensor) -> tuple[Tensor, Tensor]:
        return theta1, theta2

    def from_natural(self, theta1: Tensor, theta2: Tensor) -> tuple[Tensor, Tensor]:
        return theta1, theta2

    def push_forward(self, theta, tangent):
        return tuple(tangent)


class DiagExpectation(DiagParameterization):
    """Diagonal family, ``ξ = (η1, η2) = (m, s² + m²)``, both ``[..., M]``."""

    names = ("eta1", "eta2")
    constrained = True

    def to_natural(self, eta1: Tensor, eta2: Tensor) -> tuple[Tensor, Tensor]:
        return self.family.to_natural((eta1, eta2))

    def from_natural(self, theta1: Tensor, theta2: Tensor) -> tuple[Tensor, Tensor]:
        return self.family.to_mean((theta1, theta2))

    def from_expectation(self, eta1: Tensor, eta2: Tensor) -> tuple[Tensor, Tensor]:
        return eta1, eta2


class DiagMeanLogScale(DiagParameterization):
    """Diagonal family, ``ξ = (m, log s)``: the usual mean-field VI coordinates."""

    names = ("mean", "log_scale")

    def to_natural(self, m: Tensor, log_s: Tensor) -> tuple[Tensor, Tensor]:
        prec = torch.exp(-2.0 * log_s)
        return m * prec, -0.5 * prec

    def from_natural(self, theta1: Tensor, theta2: Tensor) -> tuple[Tensor, Tensor]:
        m, var = self.family.to_meancov((theta1, theta2))
        return m, 0.5 * var.log()


BUILTIN: tuple[type[Parameterization], ...] = (
    Natural,
    Expectation,
    MeanCholesky,
    NaturalTril,
    DiagNatural,
    DiagExpectation,
    DiagMeanLogScale,
)
"""Every built-in parameterisation class (tests enumerate this)."""
