"""Natural gradients of a Gaussian q in any parameterisation, by automatic differentiation.

With ``θ`` the natural and ``η`` the expectation parameters of q, the Fisher in θ is
``F_θ = ∂η/∂θ`` and so ``F_θ⁻¹ ∇_θ L = ∇_η L``. For a parameterisation ``ξ`` with ``J = ∂θ/∂ξ``
the Fisher is ``F_ξ = Jᵀ F_θ J`` and the natural gradient in ξ is

    F_ξ⁻¹ ∇_ξ L = (∂ξ/∂θ) ∇_η L,    ∇_η L = (∂ξ/∂η)ᵀ ∇_ξ L,

one vector–Jacobian product (through ``η ↦ ξ``) and one Jacobian–vector product (through
``θ ↦ ξ``), both from :mod:`torch.func`. No Fisher is formed or inverted and nothing is derived
by hand per parameterisation. For :class:`~natvi.parameterizations.Natural` the JVP is skipped,
and when the gradient came from one backward pass through
:meth:`~natvi.parameterizations.Natural.to_moments` (as in natvi's GP models) the VJP too: that
backward pass already computed ``∇_η L`` (see
:func:`~natvi.parameterizations.recorded_expectation_gradient`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from natvi._validation import check_finite
from natvi.parameterizations import Natural, Parameterization, recorded_expectation_gradient

__all__ = ["natural_gradient", "expectation_gradient"]


def _as_tuple(name: str, value: Sequence[Tensor], n: int) -> tuple[Tensor, ...]:
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"{name} must hold {n} tensors (one per coordinate); got {len(value)}.")
    return value


def expectation_gradient(
    parameterization: Parameterization, xi: Sequence[Tensor], grad_xi: Sequence[Tensor]
) -> tuple[Tensor, Tensor]:
    """``∇_η L = (∂ξ/∂η)ᵀ ∇_ξ L``: the natural gradient with respect to θ.

    Args:
        parameterization: the coordinates ξ.
        xi: the current coordinates, e.g. ``(m [..., M], L [..., M, M])``.
        grad_xi: ``∇_ξ L``, shaped like ``xi`` (``None`` entries mean zero).

    Returns:
        ``(∇_η1 L [..., M], ∇_η2 L [..., M, M])`` with the second entry symmetric
        (diagonal family: both ``[..., M]``).
    """
    n = len(parameterization.names)
    xi, grad_xi = _as_tuple("xi", xi, n), _as_tuple("grad_xi", grad_xi, n)
    if isinstance(parameterization, Natural) and type(parameterization).to_natural is (
        Natural.to_natural
    ):
        recorded = recorded_expectation_gradient(*xi, *grad_xi)
        if recorded is not None:
            return recorded
    xi = tuple(x.detach() for x in xi)
    grad_xi = tuple(torch.zeros_like(x) if g is None else g.detach() for x, g in zip(xi, grad_xi))
    for name, x, g in zip(parameterization.names, xi, grad_xi):
        if g.shape != x.shape:
            raise ValueError(
                f"grad_xi for {name!r} has shape {tuple(g.shape)} but {name} has "
                f"{tuple(x.shape)}; pass gradients shaped like the parameters."
            )
        check_finite(name, x)
        check_finite(f"the gradient of {name}", g)
    eta = parameterization.to_expectation(*xi)
    _, vjp_fn = torch.func.vjp(parameterization.from_expectation, *eta)
    return parameterization.family.project_tangent(vjp_fn(grad_xi))


def natural_gradient(
    parameterization: Parameterization, xi: Sequence[Tensor], grad_xi: Sequence[Tensor]
) -> tuple[Tensor, ...]:
    """Natural gradient ``F_ξ⁻¹ ∇_ξ L`` of a Gaussian q in the coordinates ξ.

    A natural-gradient step is then ``ξ ← ξ − γ · natural_gradient(...)``; in
    :class:`~natvi.parameterizations.Natural` coordinates with L the negative ELBO of a conjugate
    model, ``γ = 1`` lands on the exact optimum.

    Args:
        parameterization: the coordinates ξ (built-in or a user subclass).
        xi: current coordinates, a sequence of tensors (``[..., M]`` and ``[..., M, M]``, or
            ``[..., M]`` twice for the diagonal family); batched over leading dimensions.
        grad_xi: the ordinary gradient ``∇_ξ L``, shaped like ``xi``.

    Returns:
        A tuple shaped like ``xi``: the natural gradient in ξ (tangents of symmetric coordinates
        are symmetric, of triangular ones lower triangular).

    Example:
        >>> from natvi.parameterizations import MeanCholesky
        >>> p = MeanCholesky()
        >>> m, L = p.from_prior(torch.zeros(3), torch.eye(3))
        >>> nat_m, nat_L = natural_gradient(p, (m, L), (torch.ones(3), torch.zeros(3, 3)))
    """
    grad_eta = expectation_gradient(parameterization, xi, grad_xi)
    if torch.is_grad_enabled():
        xi = tuple(x.detach() for x in xi)
    # (in natural coordinates ξ is θ up to θ2's symmetric part: no map to evaluate)
    theta = tuple(xi) if parameterization.natural_coordinates else (
        parameterization.to_natural(*xi))
    return tuple(parameterization.push_forward(theta, grad_eta))
