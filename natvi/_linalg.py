"""Small dense linear-algebra helpers used across natvi (all batched over leading dimensions).

Note: ``torch.cholesky_inverse`` has a wrong forward-mode derivative in torch 2.13 (its JVP
disagrees with finite differences), and natvi's natural gradients take JVPs; so inverses from
a Cholesky factor go through ``torch.cholesky_solve`` here, whose derivatives are correct.
"""

from __future__ import annotations

import torch
from torch import Tensor

from natvi._validation import check_finite

__all__ = ["symmetrize", "cholesky", "cho_inverse", "cho_solve_vec", "cholesky_inverse",
           "batch_shape", "identity", "cholesky_failed"]

# Identity matrices by (n, dtype, device), for hot paths that subtract or add one every step
# (building ``torch.eye`` costs an allocation and a fill each time). Read-only: never written.
_IDENTITY: dict[tuple, Tensor] = {}


def identity(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The ``n × n`` identity (a shared tensor: use it as an operand, never write to it)."""
    key = (n, dtype, device)
    eye = _IDENTITY.get(key)
    if eye is None:
        if len(_IDENTITY) >= 64:  # (sizes seen in one process are few; stay bounded anyway)
            _IDENTITY.clear()
        eye = _IDENTITY[key] = torch.eye(n, dtype=dtype, device=device)
    return eye


def symmetrize(A: Tensor) -> Tensor:
    """``(A + Aᵀ) / 2`` over the last two dimensions."""
    return 0.5 * (A + A.mT)


def cholesky(A: Tensor, name: str) -> Tensor:
    """Lower Cholesky factor of the symmetric part of ``A`` ``[..., M, M]``.

    Raises ``ValueError`` naming ``name`` when ``A`` is not positive definite (or holds NaN),
    instead of torch's ``LinAlgError`` deep in a stack.
    """
    L, info = torch.linalg.cholesky_ex(symmetrize(A))
    if cholesky_failed(info):
        check_finite(name, A)
        raise ValueError(
            f"{name} is not positive definite (Cholesky failed at column "
            f"{int(info.max())} of {A.shape[-1]}). Pass a symmetric positive-definite matrix; if it "
            "came from an optimisation step, use a smaller step size or a safeguard."
        )
    return L


def cholesky_failed(info: Tensor) -> bool:
    """Whether ``torch.linalg.cholesky_ex``'s ``info`` reports a failed factorisation (one host
    read for an unbatched matrix, a reduction first for a batch)."""
    return bool(info.item()) if info.dim() == 0 else bool(info.any())


def cho_inverse(L: Tensor) -> Tensor:
    """``(L Lᵀ)⁻¹`` from a lower Cholesky factor ``L [..., M, M]``, symmetrised."""
    eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device).expand_as(L)
    return symmetrize(torch.cholesky_solve(eye, L))


def batch_shape(*shapes: tuple[int, ...]) -> torch.Size:
    """The broadcast of batch shapes: ``torch.broadcast_shapes``, which costs ~27 µs a call,
    called only when the shapes differ."""
    first = shapes[0]
    if all(s == first for s in shapes[1:]):
        return torch.Size(first)
    return torch.broadcast_shapes(*shapes)


def cho_solve_vec(b: Tensor, L: Tensor) -> Tensor:
    """``(L Lᵀ)⁻¹ b`` for ``b [..., M]``: two triangular solves, which broadcast batch
    dimensions themselves (``torch.cholesky_solve`` with one right-hand side costs 5× as much
    at M = 500)."""
    x = torch.linalg.solve_triangular(L, b.unsqueeze(-1), upper=False)
    return torch.linalg.solve_triangular(L.mT, x, upper=True).squeeze(-1)


def cholesky_inverse(L: Tensor) -> Tensor:
    """``(L Lᵀ)⁻¹``, symmetric, for use where no derivative is taken (``torch.cholesky_inverse``,
    ~3× cheaper than a solve against I, has a wrong JVP: see above). On CPU its result is
    symmetric bit for bit already; elsewhere it is symmetrised."""
    S = torch.cholesky_inverse(L)
    return S if S.device.type == "cpu" else symmetrize(S)
