"""``CG``: (preconditioned) conjugate gradients, matrix-free and batched over right-hand sides."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from natvi.linalg.base import LinearOperator, Solver

__all__ = ["CG"]


class CG(Solver):
    """Conjugate gradients for symmetric positive-definite ``A``, one recursion per column.

    With residual ``r = b − A x``, preconditioned residual ``z = P⁻¹ r`` and direction ``p``::

        α = (rᵀz) / (pᵀ A p);  x ← x + α p;  r ← r − α A p
        z ← P⁻¹ r;  β = (rᵀz)_new / (rᵀz)_old;  p ← z + β p

    Each right-hand side (column of ``b``, and each batch entry) has its own ``α, β``; the loop
    stops when every column satisfies ``‖r‖ ≤ tol · ‖b‖`` or after ``max_iter`` iterations.
    Only products ``A v`` are needed, so ``A`` may be an :class:`~natvi.linalg.Operator`.

    Args:
        tol: relative residual tolerance (> 0).
        max_iter: iteration cap; ``None`` means ``10 n``.
        preconditioner: ``None``, ``"jacobi"`` (``P = diag(A)``) or a callable
            ``R [..., n, k] -> P⁻¹ R`` applying an approximation of ``A⁻¹``.

    Example:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> res = CG(tol=1e-12).solve(A, torch.ones(2, dtype=torch.float64))
        >>> res.x, res.iterations
    """

    def __init__(
        self,
        tol: float = 1e-8,
        max_iter: int | None = None,
        preconditioner: str | Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if not tol > 0:
            raise ValueError(f"tol must be positive (a relative residual), got {tol!r}.")
        if max_iter is not None and (not isinstance(max_iter, int) or max_iter < 1):
            raise ValueError(f"max_iter must be a positive int or None, got {max_iter!r}.")
        if not (preconditioner is None or preconditioner == "jacobi" or callable(preconditioner)):
            raise ValueError(
                "preconditioner must be None, 'jacobi' or a callable R -> P⁻¹ R; got "
                f"{preconditioner!r}."
            )
        self.tol = float(tol)
        self.max_iter = max_iter
        self.preconditioner = preconditioner

    def _precondition(self, op: LinearOperator) -> Callable[[Tensor], Tensor]:
        if self.preconditioner is None:
            return lambda R: R
        if self.preconditioner == "jacobi":
            d = op.diagonal().unsqueeze(-1)
            if bool((d <= 0).any()):
                raise ValueError(
                    "the Jacobi preconditioner needs a positive diagonal of A; A is not "
                    "positive definite, or use preconditioner=None."
                )
            return lambda R: R / d
        return self.preconditioner

    def _solve(self, op: LinearOperator, B: Tensor, X0: Tensor | None) -> tuple[Tensor, dict]:
        apply_P = self._precondition(op)
        max_iter = self.max_iter or 10 * op.size
        X = torch.zeros_like(B) if X0 is None else X0.clone()
        R = B - op.matmat(X) if X0 is not None else B.clone()
        threshold = self.tol * torch.linalg.vector_norm(B, dim=-2, keepdim=True)
        Z = apply_P(R)
        P = Z
        rz = (R * Z).sum(-2, keepdim=True)
        it = 0
        converged = bool((torch.linalg.vector_norm(R, dim=-2, keepdim=True) <= threshold).all())
        while not converged and it < max_iter:
            AP = op.matmat(P)
            pAp = (P * AP).sum(-2, keepdim=True)
            if bool((pAp < 0).any()):
                raise ValueError(
                    "CG met a direction of negative curvature (pᵀ A p < 0): A is not positive "
                    "definite. Add damping, or use a solver for indefinite systems."
                )
            active = torch.linalg.vector_norm(R, dim=-2, keepdim=True) > threshold
            alpha = torch.where(active & (pAp > 0), rz / torch.where(pAp > 0, pAp, 1.0), 0.0)
            X = X + alpha * P
            R = R - alpha * AP
            Z = apply_P(R)
            rz_new = (R * Z).sum(-2, keepdim=True)
            beta = torch.where(rz != 0, rz_new / torch.where(rz != 0, rz, 1.0), 0.0)
            P = Z + beta * P
            rz = rz_new
            it += 1
            converged = bool((torch.linalg.vector_norm(R, dim=-2, keepdim=True) <= threshold).all())
        return X, {"iterations": it, "converged": converged}
