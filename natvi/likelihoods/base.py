"""The likelihood base class and the shared Gauss–Hermite / Monte Carlo expectation paths.

A likelihood ``p(y | f)`` over ``num_latent`` latent functions defines its log-density
:meth:`Likelihood.log_prob` and what its labels may be (:meth:`Likelihood.check_y`); everything a
variational model needs is derived from those two unless a subclass has something better:

- ``variational_expectations(f_mean, f_var, y) = E_{q(f_n)}[log p(y_n | f_n)]`` per datum, with
  ``q(f_n) = N(f_mean_n, diag f_var_n)``: Gauss–Hermite quadrature with ``num_gh`` points per latent
  (a tensor-product grid when ``num_latent > 1``), ``f = μ + sqrt(2 v) x``, weights ``w / sqrt(π)``;
- ``predict_log_density(f_mean, f_var, y) = log E_q[p(y_n | f_n)]`` (held-out log predictive);
- ``predict_mean_and_var(f_mean, f_var)``: the mean and variance of ``y`` under ``q``, from the
  conditional moments ``E[y | f]`` and ``Var[y | f]`` by the same quadrature.

Shapes: ``num_latent == 1``: ``f_mean``, ``f_var`` and ``y`` are ``[N]``; ``num_latent = L > 1``:
``f_mean``, ``f_var`` are ``[N, L]`` and ``y`` is ``[N]``. Results are ``[N]`` (the predictive mean of
a multi-class likelihood is ``[N, C]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from natvi._validation import check_finite

__all__ = ["Likelihood", "gauss_hermite", "quadrature", "positive", "inv_positive"]


@lru_cache(maxsize=32)
def _gh_grid(num_points: int, num_latent: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.hermite.hermgauss(num_points)
    w = w / math.sqrt(math.pi)
    grids = np.meshgrid(*([x] * num_latent), indexing="ij")
    wgrids = np.meshgrid(*([w] * num_latent), indexing="ij")
    nodes = np.stack([g.reshape(-1) for g in grids], axis=-1)
    weights = np.prod(np.stack([g.reshape(-1) for g in wgrids], axis=-1), axis=-1)
    return nodes, weights


@lru_cache(maxsize=64)
def _gh_tensors(
    num_points: int, num_latent: int, dtype: torch.dtype, device: torch.device | None
) -> tuple[Tensor, Tensor]:
    x, w = _gh_grid(num_points, num_latent)
    nodes = torch.as_tensor(x * math.sqrt(2.0), dtype=dtype, device=device)
    return nodes, torch.as_tensor(w, dtype=dtype, device=device)


def gauss_hermite(
    num_points: int, num_latent: int = 1, *, dtype: torch.dtype, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Nodes ``[num_points**L, L]`` and weights ``[num_points**L]`` for ``E_{N(0, I)}[g(z)]``.

    ``E[g(z)] ≈ Σ_k w_k g(z_k)`` with ``z_k = sqrt(2) x_k`` (``x`` the physicists' Hermite nodes)
    and weights summing to one; exact for polynomials of degree ``< 2 num_points`` per axis.
    The tensors are cached per ``(num_points, num_latent, dtype, device)``: do not modify them.
    """
    device = None if device is None else torch.device(device)
    return _gh_tensors(int(num_points), int(num_latent), dtype, device)


def quadrature(
    fn: Callable[[Tensor], Tensor], f_mean: Tensor, f_var: Tensor, num_points: int, num_latent: int
) -> Tensor:
    """``E_{N(f_mean, diag f_var)}[fn(F)]`` by Gauss–Hermite, per datum.

    Args:
        fn: maps ``F [K, N]`` (``num_latent == 1``) or ``F [K, N, L]`` to ``[K, N]``.
        f_mean, f_var: ``[N]`` or ``[N, L]``.
    """
    z, w = gauss_hermite(num_points, num_latent, dtype=f_mean.dtype, device=f_mean.device)
    sd = f_var.clamp_min(0).sqrt()
    if num_latent == 1:
        F = f_mean + sd * z  # [K, N]
    else:
        F = f_mean + sd * z.unsqueeze(-2)  # [K, N, L]
    return torch.einsum("k,kn->n", w, fn(F))


def _defined_in(cls: type, name: str) -> type:
    return next(c for c in cls.__mro__ if name in c.__dict__)


@lru_cache(maxsize=64)
def _gh_1d(
    num_points: int, dtype: torch.dtype, device: torch.device | None
) -> tuple[Tensor, Tensor, Tensor]:
    """One-latent grid for the fused path: nodes ``z [K]``, weights ``w [K]`` and ``[w; w ∘ z]``
    ``[2, K]`` (both first-derivative reductions in one product)."""
    z, w = _gh_tensors(num_points, 1, dtype, device)
    z = z.squeeze(-1)
    return z, w, torch.stack([w, w * z])


def variance_gradient(
    g_sd: Tensor, sd: Tensor, f_var: Tensor, at_zero: Callable[[], Tensor]
) -> Tensor:
    """``∂/∂v = ∂/∂√v / (2√v)`` for a fused expectation over ``N(μ, v)``, ``sd = √max(v, 0)``:
    where ``v = 0`` (autodiff would give ``∞ · 0``) the limit ``at_zero()``, i.e.
    ``½ ∂²_f log p(μ)`` (called only when some ``v ≤ 0``), and 0 where ``v < 0`` (the variance
    is clamped to 0). Shared by the fused Gauss–Hermite and softmax Monte Carlo expectations."""
    if not f_var.numel() or float(f_var.min()) > 0:  # (the usual case: two passes, no masks)
        return (g_sd / sd).mul_(0.5)
    positive = f_var > 0
    g_var = g_sd / (2.0 * torch.where(positive, sd, 1.0))
    return torch.where(positive, g_var, torch.where(f_var == 0, at_zero(), 0.0))


def gauss_hermite_terms(
    likelihood: Likelihood, f_mean: Tensor, f_var: Tensor, y: Tensor, grad: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(Σ_k w_k log p(y_n | μ_n + √v_n z_k), ∂/∂μ_n, ∂/∂v_n)`` ``[N]`` each (the last two
    ``None`` unless ``grad``), no autograd, from the likelihood's analytic derivatives on its
    cached Gauss–Hermite grid (:meth:`Likelihood.expectation_terms` of the base class)."""
    z, w, wz = _gh_1d(likelihood.num_gh, f_mean.dtype, f_mean.device)
    sd = f_var.clamp_min(0).sqrt()
    value, g_mean, g_var = likelihood._gauss_hermite_sums(f_mean, sd, y, z, w, wz, grad)
    if grad:
        g_var = variance_gradient(
            g_var, sd, f_var, lambda: 0.5 * likelihood.log_prob_derivatives(
                f_mean, y, second=True)[2])
    return value, g_mean, g_var


class _ExpectationTerms(torch.autograd.Function):
    """``(μ [N], v [N]) -> E_{N(μ_n, v_n)}[log p(y_n | f)]`` ``[N]`` with a closed-form backward
    from :meth:`Likelihood.expectation_terms`, which gives the value and, in the same pass,

        ∂/∂μ_n = E[∂_f log p],       ∂/∂v_n = ½ E[∂²_f log p]

    — for the fused Gauss–Hermite path ``Σ_k w_k ∂_f log p(F_kn)`` and
    ``Σ_k w_k z_k ∂_f log p(F_kn) / (2 √v_n)``, exactly what autodiff of the quadrature computes,
    so the backward pass is two products instead of a replay of the ``[K, N]`` grid (at
    ``v_n = 0``, where autodiff would give ``∞ · 0``, the limit ``½ ∂²_f log p(μ_n)``; 0 for
    ``v_n < 0``, where the variance is clamped to 0).
    """

    @staticmethod
    def forward(ctx, f_mean, f_var, likelihood, y, grad_mode):
        # (needs_input_grad does not see torch.no_grad(); the caller's grad mode is passed in)
        grad = grad_mode and (ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
        value, g_mean, g_var = likelihood.expectation_terms(f_mean, f_var, y, grad)
        if grad:
            ctx.save_for_backward(g_mean, g_var)
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        g_mean, g_var = ctx.saved_tensors
        return grad * g_mean, grad * g_var, None, None, None


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def positive(raw: Tensor) -> Tensor:
    """The positivity constraint of likelihood parameters: ``softplus(raw)``."""
    return nn.functional.softplus(raw)


def inv_positive(value: float | Tensor, name: str) -> Tensor:
    """``softplus⁻¹(value)`` in float64, raising ``ValueError`` naming ``name`` unless ``value > 0``.

    Held in float64 so that a model cast to float64 later sees exactly ``value``; a model casts its
    likelihood to its own dtype (0-dimensional parameters never change a tensor's dtype anyway).
    """
    v = torch.as_tensor(value, dtype=torch.float64)
    if not bool(torch.isfinite(v).all()) or not bool((v > 0).all()):
        raise ValueError(f"{name} must be a finite positive number; got {value}.")
    return v + torch.log(-torch.expm1(-v))


class Likelihood(nn.Module):
    """Base class: ``p(y | f)`` with ``num_latent`` latent functions per datum.

    Subclasses define :meth:`log_prob` and :meth:`check_y`, and for predictions
    :meth:`conditional_mean` and :meth:`conditional_variance`; they override
    :meth:`_variational_expectations` where a closed form exists.

    Attributes:
        num_latent: latent functions per datum (a model checks its own ``num_latent`` matches).
        num_gh: Gauss–Hermite points per latent dimension (default 20, as GPyTorch).
    """

    num_latent: int = 1
    conjugate: ClassVar[bool] = False
    """Whether q's optimum for fixed hyperparameters is Gaussian and one natural step of
    size 1 reaches it exactly (the Gaussian likelihood)."""
    task: ClassVar[str] = "regression"
    """What the targets are: ``"regression"`` (real values), ``"counts"``, ``"binary"`` or
    ``"multiclass"`` (class labels)."""

    def __init__(self, num_gh: int = 20) -> None:
        super().__init__()
        if int(num_gh) < 1:
            raise ValueError(f"num_gh must be a positive integer, got {num_gh}.")
        self.num_gh = int(num_gh)

    def log_prob(self, F: Tensor, y: Tensor) -> Tensor:
        """``log p(y | F)``: ``F [..., N]`` (or ``[..., N, L]``), ``y [N]`` -> ``[..., N]``."""
        raise NotImplementedError

    def log_prob_derivatives(
        self, F: Tensor, y: Tensor, second: bool = False
    ) -> tuple[Tensor, ...]:
        """``(log p(y | F), ∂_F log p, [∂²_F log p])`` elementwise, for one latent function.

        Optional: a one-latent likelihood without trainable parameters whose class defines it
        *together with* :meth:`log_prob` gets the fused Gauss–Hermite expectation (the backward pass from these
        derivatives, not a replay of the quadrature grid); others — including a subclass that
        overrides only ``log_prob`` — keep autodiff of :meth:`log_prob`.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define log_prob_derivatives")

    def _gauss_hermite_sums(
        self, f_mean: Tensor, sd: Tensor, y: Tensor, z: Tensor, w: Tensor, wz: Tensor, grad: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The fused expectation's three reductions over the grid ``F = μ + sd z`` ``[K, N]``:
        ``(Σ_k w_k log p(F_k), Σ_k w_k ∂_f log p(F_k), Σ_k w_k z_k ∂_f log p(F_k))``, each
        ``[N]`` (the last two ``None`` unless ``grad``). From :meth:`log_prob_derivatives`; a
        likelihood may fuse the grid further (the probit Bernoulli does), tested against this."""
        F = torch.addr(f_mean, z, sd)  # μ + sd z, [K, N]
        if not grad:
            return w @ self.log_prob_derivatives(F, y)[0], None, None
        lp, d1 = self.log_prob_derivatives(F, y)[:2]
        g_mean, g_var = wz @ d1  # Σ_k w_k d1_kn and Σ_k w_k z_k d1_kn
        return w @ lp, g_mean, g_var

    @property
    def analytic_derivatives(self) -> bool:
        """Whether :meth:`log_prob_derivatives` is defined alongside this :meth:`log_prob`, and
        the likelihood has no trainable parameters (the fused backward differentiates in the
        latent ``f`` only, so a likelihood with its own parameters keeps autodiff)."""
        owner = _defined_in(type(self), "log_prob_derivatives")
        if owner is Likelihood or owner is not _defined_in(type(self), "log_prob"):
            return False
        return not any(p.requires_grad for p in self.parameters())

    def check_y(self, y: Tensor) -> Tensor:
        """Validate labels ``y [N]`` (``ValueError`` outside the support); return them as used."""
        check_finite("y", y)
        self._check_support(y, "y", "the {} likelihood")
        return y

    @classmethod
    def check_targets(
        cls, y: Any, what: str = "y", suggest: str = "the {} likelihood"
    ) -> np.ndarray:
        """Check a user's raw targets ``y [N]`` (array-like, before any encoding) for this
        likelihood; return them as used to train (float64 values here; class labels for the
        classification likelihoods, which override this).

        Raises ``ValueError`` naming ``what`` (e.g. ``"y"``, or ``"data.csv: target 'label'"``)
        if a value is not numeric, not finite, or outside the likelihood's support; another
        likelihood is suggested through ``suggest`` (``"--likelihood {}"`` at the command line).
        """
        arr = np.asarray(y)
        try:
            values = arr.astype(np.float64)
        except (TypeError, ValueError):
            bad = next(v for v in arr.reshape(-1) if not _is_number(v))
            bad = bad.item() if isinstance(bad, np.generic) else bad
            raise ValueError(
                f"{what} is not numeric (it holds {bad!r}), but the {cls.__name__} likelihood "
                f"takes numbers; for class labels use {suggest.format('bernoulli')} or "
                f"{suggest.format('softmax')}."
            ) from None
        if not np.isfinite(values).all():
            bad = values[~np.isfinite(values)][0]
            raise ValueError(f"{what} holds a non-finite value ({bad}); remove or replace it.")
        cls._check_support(torch.from_numpy(values), what, suggest)
        return values

    @classmethod
    def _check_support(cls, y: Tensor, what: str, suggest: str) -> None:
        """Raise ``ValueError`` if a finite target in ``y`` lies outside the support (the one
        place a likelihood states its support, for :meth:`check_y` and :meth:`check_targets`)."""

    def conditional_mean(self, F: Tensor) -> Tensor:
        """``E[y | F]`` for ``F [..., N]`` (or ``[..., N, L]``)."""
        raise NotImplementedError(f"{type(self).__name__} does not define conditional_mean")

    def conditional_variance(self, F: Tensor) -> Tensor:
        """``Var[y | F]`` for ``F [..., N]`` (or ``[..., N, L]``)."""
        raise NotImplementedError(f"{type(self).__name__} does not define conditional_variance")

    def _check_f(self, f_mean: Tensor, f_var: Tensor, y: Tensor | None = None) -> None:
        want = "[N]" if self.num_latent == 1 else f"[N, {self.num_latent}]"
        ok = f_mean.dim() == (1 if self.num_latent == 1 else 2) and (
            self.num_latent == 1 or f_mean.shape[-1] == self.num_latent
        )
        if not ok or f_var.shape != f_mean.shape:
            raise ValueError(
                f"{type(self).__name__} has num_latent={self.num_latent}, so f_mean and f_var "
                f"must both have shape {want}; got {tuple(f_mean.shape)} and {tuple(f_var.shape)}."
            )
        if y is not None and y.shape != f_mean.shape[:1]:
            raise ValueError(
                f"y must have shape [N] = {tuple(f_mean.shape[:1])} to match f_mean; "
                f"got {tuple(y.shape)}."
            )

    def variational_expectations(self, f_mean: Tensor, f_var: Tensor, y: Tensor) -> Tensor:
        """``E_{N(f_mean, f_var)}[log p(y_n | f_n)]`` per datum, ``[N]``.

        Example:
            >>> lik = Bernoulli()
            >>> ve = lik.variational_expectations(torch.zeros(3), torch.ones(3), torch.ones(3))
        """
        self._check_f(f_mean, f_var, y)
        y = self.check_y(y)
        return self._variational_expectations(f_mean, f_var, y)

    def _variational_expectations(self, f_mean: Tensor, f_var: Tensor, y: Tensor) -> Tensor:
        if self.has_expectation_terms:
            return _ExpectationTerms.apply(f_mean, f_var, self, y, torch.is_grad_enabled())
        return self.quadrature_expectations(f_mean, f_var, y)

    def expectation_terms(
        self, f_mean: Tensor, f_var: Tensor, y: Tensor, grad: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(E[log p(y_n | f_n)], ∂/∂μ_n, ∂/∂v_n)`` ``[N]`` each under ``f_n ~ N(μ_n, v_n)``,
        without autograd (the derivatives only if ``grad``), for a one-latent likelihood whose
        own parameters take no gradient.

        Used, where :attr:`has_expectation_terms`, for the fused Gauss–Hermite expectation and
        by a model that differentiates its whole ELBO in closed form (:mod:`natvi.gp.fused`).
        The base class gives the Gauss–Hermite terms from :meth:`log_prob_derivatives`; a
        likelihood with a closed-form expectation defines both this and
        :meth:`_variational_expectations` (as this method's value; tested against autodiff).
        """
        return gauss_hermite_terms(self, f_mean, f_var, y, grad)

    @property
    def has_expectation_terms(self) -> bool:
        """Whether :meth:`expectation_terms` applies now: one latent function, the expectation
        and its terms defined by the same class (a subclass that overrides one of them only
        keeps autodiff), and no gradient to the likelihood's own parameters; in the base class
        also :attr:`analytic_derivatives`."""
        cls = type(self)
        owner = _defined_in(cls, "expectation_terms")
        if self.num_latent != 1 or _defined_in(cls, "_variational_expectations") is not owner:
            return False
        if owner is Likelihood:
            return self.analytic_derivatives
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))

    def quadrature_expectations(
        self, f_mean: Tensor, f_var: Tensor, y: Tensor, num_points: int | None = None
    ) -> Tensor:
        """The generic Gauss–Hermite variational expectation by autodiff of :meth:`log_prob`
        (the reference for closed forms and for the fused path)."""
        n = self.num_gh if num_points is None else num_points
        return quadrature(lambda F: self.log_prob(F, y), f_mean, f_var, n, self.num_latent)

    def predict_log_density(self, f_mean: Tensor, f_var: Tensor, y: Tensor) -> Tensor:
        """``log ∫ p(y_n | f) N(f; f_mean_n, f_var_n) df`` per datum, ``[N]``."""
        self._check_f(f_mean, f_var, y)
        y = self.check_y(y)
        return self._predict_log_density(f_mean, f_var, y)

    def _predict_log_density(self, f_mean: Tensor, f_var: Tensor, y: Tensor) -> Tensor:
        z, w = gauss_hermite(self.num_gh, self.num_latent, dtype=f_mean.dtype, device=f_mean.device)
        sd = f_var.clamp_min(0).sqrt()
        F = f_mean + sd * (z if self.num_latent == 1 else z.unsqueeze(-2))
        return torch.logsumexp(self.log_prob(F, y) + w.log().unsqueeze(-1), dim=0)

    def predict_mean_and_var(self, f_mean: Tensor, f_var: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``y`` under ``q(f)``: ``E[E[y|f]]``, ``E[Var[y|f]] + Var[E[y|f]]``."""
        self._check_f(f_mean, f_var)
        return self._predict_mean_and_var(f_mean, f_var)

    def _predict_mean_and_var(self, f_mean: Tensor, f_var: Tensor) -> tuple[Tensor, Tensor]:
        L, n = self.num_latent, self.num_gh
        mean = quadrature(self.conditional_mean, f_mean, f_var, n, L)
        second = quadrature(
            lambda F: self.conditional_variance(F) + self.conditional_mean(F) ** 2,
            f_mean, f_var, n, L,
        )
        return mean, second - mean**2

    def extra_repr(self) -> str:
        return f"num_latent={self.num_latent}, num_gh={self.num_gh}"
