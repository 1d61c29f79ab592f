"""``Cholesky``: the dense direct solver, natvi's reference for every other backend."""

from __future__ import annotations

import torch
from torch import Tensor

from natvi._linalg import cholesky
from natvi.linalg.base import LinearOperator, Solver

__all__ = ["Cholesky"]


class Cholesky(Solver):
    """Solve ``A x = b`` through ``A = L Lᵀ``: ``x = L⁻ᵀ (L⁻¹ b)``; ``O(n³)`` once per ``A``.

    ``A`` is a dense symmetric positive-definite tensor ``[..., n, n]`` (its symmetric part is
    used) or an operator, which is materialised with :meth:`LinearOperator.to_dense`
    (``n`` products). A matrix that is not positive definite raises ``ValueError``.

    Example:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> Cholesky().solve(A, torch.ones(2, dtype=torch.float64)).x
        tensor([0.1818, 0.2727], dtype=torch.float64)
    """

    def _solve(self, op: LinearOperator, B: Tensor, X0: Tensor | None) -> tuple[Tensor, dict]:
        A = op.to_dense(dtype=B.dtype, device=B.device)
        L = cholesky(A, "A")
        return torch.cholesky_solve(B, L), {"iterations": 0}
