"""``Woodbury``: exact solves with ``D + U Vᵀ`` in ``O(n r² + r³)`` instead of ``O(n³)``."""

from __future__ import annotations

import torch
from torch import Tensor

from natvi._linalg import cholesky
from natvi.linalg.base import LinearOperator, LowRankPlusDiag, Solver

__all__ = ["Woodbury"]


class Woodbury(Solver):
    """Solve ``(D + U Vᵀ) x = b`` by the Sherman–Morrison–Woodbury identity::

        (D + U Vᵀ)⁻¹ = D⁻¹ − D⁻¹ U (I_r + Vᵀ D⁻¹ U)⁻¹ Vᵀ D⁻¹

    ``A`` must be a :class:`~natvi.linalg.LowRankPlusDiag` (``D = diag(damping)``, ``U, V``
    ``[..., n, r]``). The ``r × r`` capacitance ``I + Vᵀ D⁻¹ U`` is factorised by Cholesky in
    the symmetric case ``V = U`` (it is then positive definite) and by LU otherwise. Cost
    ``O(n r² + r³)`` — the choice when ``r ≪ n`` (a damped GGN from a small minibatch).

    Example:
        >>> U = torch.randn(1000, 8, dtype=torch.float64)
        >>> A = LowRankPlusDiag(1e-3, U)
        >>> x = Woodbury().solve(A, torch.randn(1000, dtype=torch.float64)).x
    """

    accepts_dense = False

    def _solve(self, op: LinearOperator, B: Tensor, X0: Tensor | None) -> tuple[Tensor, dict]:
        if not isinstance(op, LowRankPlusDiag):
            raise ValueError(
                "Woodbury needs A as natvi.linalg.LowRankPlusDiag(damping, U, V); for a dense "
                "or matrix-free A use Cholesky or CG."
            )
        d = op.damping.unsqueeze(-1) if op.damping.dim() else op.damping
        U = op.U
        V = U if op.V is None else op.V
        DiB = B / d
        DiU = U / d
        eye = torch.eye(op.rank, dtype=U.dtype, device=U.device)
        C = eye + V.mT @ DiU
        rhs = V.mT @ DiB
        if op.symmetric:
            Y = torch.cholesky_solve(rhs, cholesky(C, "I + Uᵀ D⁻¹ U"))
        else:
            Y = torch.linalg.solve(C, rhs)
        return DiB - DiU @ Y, {"iterations": 0}
