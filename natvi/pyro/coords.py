"""Parameterisations of the coordinates that Pyro actually stores for Gaussian guides.

Pyro keeps every ``pyro.param`` as an *unconstrained* tensor ``u`` and hands the model
``transform_to(constraint)(u)``. A natural gradient must be taken in the coordinates that are
updated, so natvi describes Pyro's storage as a :class:`~natvi.parameterizations.Parameterization`
whose coordinates are the unconstrained tensors themselves:

- :class:`LocScaleUnitTril` — ``ξ = (m, s, U)`` with ``S = D U Uᵀ D``, ``D = diag(s)``, ``U`` unit
  lower triangular: the constrained coordinates of ``AutoMultivariateNormal`` (``loc``, ``scale``,
  ``scale_tril``; Pyro's ``get_posterior`` builds ``scale_tril = scale[..., None] * U``).
- :class:`DiagLocScale` — ``ξ = (m, s)``, the standard deviations ``s [..., M]``: the constrained
  coordinates of ``AutoDiagonalNormal`` and of each site of ``AutoNormal``.
- :class:`Constrained` — wraps any parameterisation with one transform per coordinate
  (``ξ_k = T_k(u_k)``), so that ``u`` (what Pyro stores and optimisers update) becomes the
  coordinate system. With ``T`` = softplus for ``scale`` and Pyro's ``UnitLowerCholeskyTransform``
  for ``scale_tril`` this is exactly ``AutoMultivariateNormal``'s storage.

Example::

    from torch.distributions import transform_to
    from pyro.distributions import constraints
    p = Constrained(LocScaleUnitTril(), [transform_to(constraints.real),
                                         transform_to(constraints.softplus_positive),
                                         transform_to(constraints.unit_lower_cholesky)])
    nat = natvi.natural_gradient(p, (loc_u, scale_u, tril_u), (g_loc, g_scale, g_tril))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions.transforms import Transform

from natvi.parameterizations import DiagParameterization, MeanCholesky, Parameterization

__all__ = ["LocScaleUnitTril", "DiagLocScale", "Constrained"]


def _unit_lower(U: Tensor) -> Tensor:
    eye = torch.eye(U.shape[-1], dtype=U.dtype, device=U.device)
    return U.tril(-1) + eye


class LocScaleUnitTril(Parameterization):
    """``ξ = (m [..., M], s [..., M], U [..., M, M])``, ``S = D U Uᵀ D`` with ``D = diag(s)``.

    ``U`` is unit lower triangular (only its strictly lower part is read) and ``s > 0``; the
    Cholesky factor of the covariance is ``L = D U``, so ``s = diag(L)`` and ``U = D⁻¹ L``.
    """

    names = ("loc", "scale", "scale_tril")
    constrained = True

    def to_natural(self, m: Tensor, s: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
        return MeanCholesky().to_natural(m, s.unsqueeze(-1) * _unit_lower(U))

    def from_natural(self, theta1: Tensor, theta2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m, L = MeanCholesky().from_natural(theta1, theta2)
        s = L.diagonal(dim1=-2, dim2=-1)
        return m, s, L / s.unsqueeze(-1)

    def to_meancov(self, m: Tensor, s: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
        L = s.unsqueeze(-1) * _unit_lower(U)
        return m, L @ L.mT


class DiagLocScale(DiagParameterization):
    """Diagonal family, ``ξ = (m, s)`` with ``s`` the standard deviations, both ``[..., M]``."""

    names = ("loc", "scale")
    constrained = True

    def to_natural(self, m: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        prec = s.pow(-2)
        return m * prec, -0.5 * prec

    def from_natural(self, theta1: Tensor, theta2: Tensor) -> tuple[Tensor, Tensor]:
        m, var = self.family.to_meancov((theta1, theta2))
        return m, var.sqrt()

    def to_meancov(self, m: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        return m, s * s


class Constrained(Parameterization):
    """``base`` seen through per-coordinate transforms: coordinates ``u`` with ``ξ_k = T_k(u_k)``.

    ``to_natural(*u) = base.to_natural(T_1(u_1), ...)`` and
    ``from_natural(θ) = (T_1⁻¹(ξ_1), ...)`` with ``ξ = base.from_natural(θ)``. Natural gradients
    in ``u`` then follow from :func:`natvi.natural_gradient` with no further work.

    Args:
        base: the parameterisation of the constrained values.
        transforms: one ``torch.distributions`` transform per coordinate of ``base`` (e.g.
            ``transform_to(constraint)`` of each ``pyro.param``).
    """

    def __init__(self, base: Parameterization, transforms: Sequence[Transform]) -> None:
        transforms = tuple(transforms)
        if len(transforms) != len(base.names):
            raise ValueError(
                f"transforms must hold one transform per coordinate of {base!r} "
                f"({', '.join(base.names)}); got {len(transforms)}."
            )
        self.base = base
        self.transforms = transforms
        self.family = base.family
        self.names = base.names

    def constrained(self, *u: Tensor) -> tuple[Tensor, ...]:
        """``u -> ξ``: the constrained values, the coordinates of ``base``."""
        return tuple(t(x) for t, x in zip(self.transforms, u))

    def to_natural(self, *u: Tensor) -> tuple[Tensor, Tensor]:
        return self.base.to_natural(*self.constrained(*u))

    def from_natural(self, theta1: Tensor, theta2: Tensor) -> tuple[Tensor, ...]:
        xi = self.base.from_natural(theta1, theta2)
        return tuple(t.inv(x) for t, x in zip(self.transforms, xi))

    def to_meancov(self, *u: Tensor) -> tuple[Tensor, Tensor]:
        return self.base.to_meancov(*self.constrained(*u))

    def __repr__(self) -> str:
        inner = ", ".join(type(t).__name__ for t in self.transforms)
        return f"Constrained({self.base!r}, [{inner}])"
