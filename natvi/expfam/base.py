"""The exponential-family protocol: natural θ ↔ mean μ through the log-partition A.

For a family ``p(x | θ) = h(x) exp(⟨θ, T(x)⟩ − A(θ))`` the mean parameters are
``μ = ∇A(θ)`` and the Fisher information is ``F(θ) = ∇²A(θ) = ∂μ/∂θ``. Hence, for any loss L,

    F(θ)⁻¹ ∇_θ L = (∂θ/∂μ)ᵀ ∇_θ L = ∇_μ L,

the natural gradient in θ is the ordinary gradient in μ: one vector–Jacobian product through
the map μ ↦ θ, no matrix formed or inverted. This module gives that computation once, for any
family; subclasses only say how to go between θ and μ (and may override with closed forms).

Parameters are a ``Tensor`` or a tuple of tensors (the Gaussian carries ``(θ1, θ2)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

Params = Tensor | tuple[Tensor, ...]

__all__ = ["ExponentialFamily", "Params"]


class ExponentialFamily:
    """Base class of natvi's exponential families.

    A subclass defines :meth:`log_partition` and :meth:`to_natural` (the inverse of
    ``μ = ∇A(θ)``); :meth:`to_mean`, :meth:`natural_gradient` and :meth:`fisher_vp` then come
    from automatic differentiation. Subclasses with closed forms override them.
    """

    def log_partition(self, theta: Params) -> Tensor:
        """``A(θ)``, one value per batch element ``[...]``."""
        raise NotImplementedError

    def to_natural(self, mu: Params) -> Params:
        """The inverse of the mean map: ``θ`` such that ``∇A(θ) = μ``."""
        raise NotImplementedError

    def to_mean(self, theta: Params) -> Params:
        """Mean parameters ``μ = ∇A(θ)`` (by autodiff unless overridden)."""
        value, vjp_fn = torch.func.vjp(self.log_partition, theta)
        (mu,) = vjp_fn(torch.ones_like(value))
        return self.project_tangent(mu)

    def in_domain(self, theta: Params) -> bool:
        """Whether ``θ`` lies in the natural parameter space: the mean map is defined there
        (it raises ``ValueError`` outside) and finite. Override for a cheaper check."""
        try:
            mu = self.to_mean(theta)
        except ValueError:
            return False
        return all(bool(torch.isfinite(m).all()) for m in (mu if isinstance(mu, tuple) else (mu,)))

    def project_tangent(self, v: Params) -> Params:
        """Project a (co)tangent onto the family's parameter space (identity by default)."""
        return v

    def natural_gradient(self, theta: Params, grad_theta: Params) -> Params:
        """Natural gradient ``F(θ)⁻¹ ∇_θ L``, computed as ``∇_μ L = (∂θ/∂μ)ᵀ ∇_θ L``.

        Args:
            theta: natural parameters.
            grad_theta: ``∇_θ L``, shaped like ``theta``.

        Returns:
            The natural gradient, shaped like ``theta``.
        """
        mu = self.to_mean(theta)
        _, vjp_fn = torch.func.vjp(self.to_natural, mu)
        (grad_mu,) = vjp_fn(grad_theta)
        return self.project_tangent(grad_mu)

    def fisher_vp(self, theta: Params, v: Params) -> Params:
        """Fisher–vector product ``F(θ) v = (∂μ/∂θ) v`` (one Jacobian–vector product)."""
        _, Fv = torch.func.jvp(self.to_mean, (theta,), (v,))
        return Fv
