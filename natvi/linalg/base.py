"""The solver protocol, its result, and the operators a solver accepts.

Every solver in :mod:`natvi.linalg` has one face::

    result = solver.solve(A, b, x0=None)   # -> SolveResult, result.x solves A x = b

``A`` is either a dense symmetric positive-definite tensor ``[..., n, n]`` or a
:class:`LinearOperator` (matrix-free :class:`Operator`, or the structured
:class:`LowRankPlusDiag` ``D + U Vᵀ``).

Batching convention (the one of ``torch.linalg.solve`` with an explicit rule):

- ``b`` of shape ``[..., n]`` (one dimension fewer than a dense ``A``) is a vector right-hand
  side; ``x`` has the same shape.
- ``b`` of shape ``[..., n, k]`` (as many dimensions as a dense ``A``) holds ``k`` right-hand
  sides as *columns*; ``x`` is ``[..., n, k]``.

A matrix-free :class:`Operator` has no batch dimensions, so with it ``b`` is ``[n]`` or
``[n, k]``. Internally every solver works on column blocks ``[..., n, k]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from natvi._validation import check_finite

__all__ = [
    "LinearOperator",
    "Operator",
    "DenseOperator",
    "LowRankPlusDiag",
    "SolveResult",
    "Solver",
    "as_operator",
]


class LinearOperator:
    """A square linear map ``[..., n, n]`` known through products with column blocks.

    Subclasses define :meth:`matmat` (``X [..., n, k] -> A X``), :attr:`size`,
    :attr:`batch_shape`, :attr:`dtype` and :attr:`device` (the latter two may be ``None`` when
    they follow the right-hand side).
    """

    size: int
    batch_shape: torch.Size = torch.Size()
    dtype: torch.dtype | None = None
    device: torch.device | None = None

    def matmat(self, X: Tensor) -> Tensor:
        raise NotImplementedError

    def matvec(self, v: Tensor) -> Tensor:
        """``A v`` for ``v [..., n]``."""
        return self.matmat(v.unsqueeze(-1)).squeeze(-1)

    def to_dense(self, dtype: torch.dtype | None = None, device=None) -> Tensor:
        """The matrix ``[..., n, n]``, built from ``n`` products with the identity."""
        dtype = self.dtype or dtype or torch.get_default_dtype()
        device = self.device or device
        eye = torch.eye(self.size, dtype=dtype, device=device)
        return self.matmat(eye.expand(*self.batch_shape, self.size, self.size))

    def diagonal(self) -> Tensor:
        """The diagonal ``[..., n]`` (from :meth:`to_dense` unless a subclass knows better)."""
        return self.to_dense().diagonal(dim1=-2, dim2=-1)

    @property
    def num_entries(self) -> int:
        """Numbers that describe the operator (what a device must load): ``n²`` by default."""
        return self.size * self.size


class Operator(LinearOperator):
    """A matrix-free symmetric positive-definite operator from a product function.

    Args:
        matvec: ``v [n] -> A v [n]``.
        size: ``n``.
        matmat: optional ``X [n, k] -> A X [n, k]``; when omitted, columns go through
            ``matvec`` one at a time.
        dtype, device: optional; when omitted they follow the right-hand side.

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
        >>> op = Operator(lambda v: A @ v, 2)
        >>> CG().solve(op, torch.ones(2)).x
    """

    def __init__(
        self,
        matvec: Callable[[Tensor], Tensor],
        size: int,
        *,
        matmat: Callable[[Tensor], Tensor] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not callable(matvec):
            raise ValueError(f"matvec must be a callable v -> A v, got {type(matvec).__name__}.")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int (the n of A [n, n]), got {size!r}.")
        self._matvec = matvec
        self._matmat = matmat
        self.size = size
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None

    def matvec(self, v: Tensor) -> Tensor:
        if v.dim() > 1:
            return self.matmat(v.unsqueeze(-1)).squeeze(-1)
        return self._matvec(v)

    def matmat(self, X: Tensor) -> Tensor:
        if self._matmat is not None:
            return self._matmat(X)
        if X.dim() != 2:
            raise ValueError(
                f"Operator has no batch dimensions; expected a block [n, k], got {tuple(X.shape)}."
            )
        return torch.stack([self._matvec(X[:, j]) for j in range(X.shape[1])], dim=1)


class DenseOperator(LinearOperator):
    """A dense matrix ``[..., n, n]`` seen as an operator (what solvers wrap tensors in)."""

    def __init__(self, A: Tensor) -> None:
        self.A = A
        self.size = A.shape[-1]
        self.batch_shape = A.shape[:-2]
        self.dtype = A.dtype
        self.device = A.device

    def matmat(self, X: Tensor) -> Tensor:
        return self.A @ X

    def to_dense(self, dtype=None, device=None) -> Tensor:
        return self.A

    def diagonal(self) -> Tensor:
        return self.A.diagonal(dim1=-2, dim2=-1)


class LowRankPlusDiag(LinearOperator):
    """``A = D + U Vᵀ`` with ``D = diag(damping)`` positive and few columns ``r``.

    The damped curvature of natural-gradient descent, ``λ I + Jᵀ J / B``, has this form with
    ``U = V = Jᵀ / √B``; any solver accepts it (Woodbury uses the structure, the others use
    its products, ``O(n r)`` each).

    Args:
        damping: ``λ > 0`` — a float, a 0-dim tensor, or a per-coordinate diagonal ``[..., n]``.
        U: ``[..., n, r]``.
        V: ``[..., n, r]``; defaults to ``U`` (the symmetric case, required by CG, OU and
            Cholesky, which need a symmetric positive-definite ``A``).

    Example:
        >>> U = torch.randn(100, 5, dtype=torch.float64)
        >>> A = LowRankPlusDiag(1e-2, U)
        >>> x = Woodbury().solve(A, torch.ones(100, dtype=torch.float64)).x
    """

    def __init__(self, damping: float | Tensor, U: Tensor, V: Tensor | None = None) -> None:
        if not torch.is_tensor(U) or U.dim() < 2:
            raise ValueError(
                "U must be a tensor [..., n, r] (the low-rank factor of D + U Vᵀ), got "
                f"{tuple(U.shape) if torch.is_tensor(U) else type(U).__name__}."
            )
        check_finite("U", U)
        if V is not None:
            _check_same_shape("V", V, "U", U)
        d = torch.as_tensor(damping, dtype=U.dtype, device=U.device)
        check_finite("damping", d)
        if d.dim() > 0 and d.shape[-1] != U.shape[-2]:
            raise ValueError(
                f"damping must be a scalar or a diagonal [..., n] with n = {U.shape[-2]}, got "
                f"shape {tuple(d.shape)}."
            )
        if bool((d <= 0).any()):
            raise ValueError(
                "damping must be positive (D + U Vᵀ needs D positive definite); got a value "
                f"{float(d.min()):.3g}. Use a small positive damping such as 1e-6."
            )
        self.damping = d
        self.U = U
        self.V = V
        self.symmetric = V is None
        self.size = U.shape[-2]
        self.batch_shape = torch.broadcast_shapes(U.shape[:-2], d.shape[:-1] if d.dim() else ())
        self.dtype = U.dtype
        self.device = U.device

    @property
    def rank(self) -> int:
        return self.U.shape[-1]

    def matmat(self, X: Tensor) -> Tensor:
        V = self.U if self.V is None else self.V
        d = self.damping.unsqueeze(-1) if self.damping.dim() else self.damping
        return d * X + self.U @ (V.mT @ X)

    def to_dense(self, dtype=None, device=None) -> Tensor:
        V = self.U if self.V is None else self.V
        d = self.damping.expand(*self.batch_shape, self.size)
        return torch.diag_embed(d) + self.U @ V.mT

    def diagonal(self) -> Tensor:
        V = self.U if self.V is None else self.V
        return self.damping + (self.U * V).sum(-1)

    @property
    def num_entries(self) -> int:
        factors = 1 if self.V is None else 2
        return factors * self.size * self.rank + self.size


def _check_same_shape(name: str, value, ref_name: str, ref: Tensor) -> None:
    """``value`` must be a finite tensor shaped like ``ref``; the error names both."""
    if not torch.is_tensor(value) or value.shape != ref.shape:
        raise ValueError(
            f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got "
            f"{tuple(value.shape) if torch.is_tensor(value) else type(value).__name__}."
        )
    check_finite(name, value)


def as_operator(A: Tensor | LinearOperator) -> LinearOperator:
    """Wrap a dense tensor as a :class:`DenseOperator`; pass operators through."""
    if isinstance(A, LinearOperator):
        return A
    return DenseOperator(A)


@dataclass
class SolveResult:
    """What every ``solve`` returns.

    Attributes:
        x: the solution estimate, shaped like ``b``.
        iterations: iterations (CG), simulated time steps (OU) or 0 (direct solvers).
        residual: relative residual ``‖b − A x‖ / ‖b‖`` per right-hand side, shape
            ``b.shape[:-1]`` for vector ``b`` and ``b.shape[:-2] + (k,)`` for a block.
        digital_seconds: wall-clock seconds this solve took on this machine.
        converged: whether an iterative solver met its tolerance (``None`` when it has none).
        final: OU only — the last state of the trajectory (shaped like ``b``).
        analog_time: OU only — simulated time in device units τ.
        device_seconds: OU only — modelled seconds on a thermodynamic device.
    """

    x: Tensor
    iterations: int
    residual: Tensor
    digital_seconds: float
    converged: bool | None = None
    final: Tensor | None = None
    analog_time: float | None = None
    device_seconds: float | None = None


class Solver:
    """Base of every solver: validates inputs, times the solve, reshapes, reports residuals.

    Subclasses implement ``_solve(op, B, X0) -> (X, info)`` on column blocks
    ``B [..., n, k]`` and return extra result fields in ``info``.
    """

    accepts_dense: bool = True

    def solve(self, A: Tensor | LinearOperator, b: Tensor, x0: Tensor | None = None) -> SolveResult:
        """Solve ``A x = b``; see the module docstring for shapes."""
        op, B, X0, vector = prepare(A, b, x0, accepts_dense=self.accepts_dense)
        if B.is_cuda:
            torch.cuda.synchronize(B.device)
        start = time.perf_counter()
        X, info = self._solve(op, B, X0)
        if B.is_cuda:
            torch.cuda.synchronize(B.device)
        seconds = time.perf_counter() - start
        residual = relative_residual(op, B, X)
        if vector:
            X = X.squeeze(-1)
            residual = residual.squeeze(-1)
            if info.get("final") is not None:
                info["final"] = info["final"].squeeze(-1)
        return SolveResult(
            x=X,
            residual=residual,
            digital_seconds=seconds,
            iterations=info.pop("iterations", 0),
            **info,
        )

    def _solve(self, op: LinearOperator, B: Tensor, X0: Tensor | None) -> tuple[Tensor, dict]:
        raise NotImplementedError


def relative_residual(op: LinearOperator, B: Tensor, X: Tensor) -> Tensor:
    """``‖B − A X‖ / ‖B‖`` column by column (``‖B‖ = 0`` gives the absolute residual)."""
    r = torch.linalg.vector_norm(B - op.matmat(X), dim=-2)
    nb = torch.linalg.vector_norm(B, dim=-2)
    return r / torch.where(nb > 0, nb, torch.ones_like(nb))


def prepare(
    A: Tensor | LinearOperator, b: Tensor, x0: Tensor | None, *, accepts_dense: bool = True
) -> tuple[LinearOperator, Tensor, Tensor | None, bool]:
    """Check ``A``, ``b``, ``x0``; return ``(operator, B [..., n, k], X0 or None, b_was_vector)``."""
    if isinstance(A, LinearOperator):
        op = A
    elif torch.is_tensor(A):
        if not accepts_dense:
            raise ValueError(
                "this solver needs A as a structured natvi.linalg.LowRankPlusDiag, not a dense "
                "tensor; use Cholesky (or CG) for a dense A."
            )
        if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
            raise ValueError(
                f"A must be square with shape [..., n, n]; got {tuple(A.shape)}. Pass the "
                "symmetric positive-definite matrix of the system, or a natvi.linalg.Operator."
            )
        if not A.is_floating_point():
            raise ValueError(f"A must be a floating-point tensor, got dtype {A.dtype}.")
        check_finite("A", A)
        op = DenseOperator(A)
    else:
        raise ValueError(
            "A must be a torch.Tensor [..., n, n] or a natvi.linalg.LinearOperator "
            f"(e.g. Operator(matvec, n)); got {type(A).__name__}."
        )
    if not torch.is_tensor(b):
        raise ValueError(
            f"b must be a torch.Tensor [..., n] or [..., n, k], got {type(b).__name__}."
        )
    if not b.is_floating_point():
        raise ValueError(f"b must be a floating-point tensor, got dtype {b.dtype}.")
    if op.dtype is not None and b.dtype != op.dtype:
        raise ValueError(f"b has dtype {b.dtype} but A has {op.dtype}; convert one of them.")
    if op.device is not None and b.device != op.device:
        raise ValueError(f"b is on {b.device} but A is on {op.device}; move one of them.")
    check_finite("b", b)
    n, nbatch = op.size, len(op.batch_shape)
    if b.dim() == nbatch + 1:
        vector, B = True, b.unsqueeze(-1)
    elif b.dim() == nbatch + 2:
        vector, B = False, b
    else:
        raise ValueError(
            f"shape mismatch: A is {tuple(op.batch_shape) + (n, n)}, so b must be "
            f"{tuple(op.batch_shape) + (n,)} (one right-hand side) or "
            f"{tuple(op.batch_shape) + (n, 'k')} (k columns); got {tuple(b.shape)}."
        )
    if B.shape[-2] != n or B.shape[:-2] != op.batch_shape:
        raise ValueError(
            f"shape mismatch: A is {tuple(op.batch_shape) + (n, n)} but b is {tuple(b.shape)}; "
            f"b needs {n} rows and A's batch shape {tuple(op.batch_shape)}."
        )
    X0 = None
    if x0 is not None:
        _check_same_shape("x0", x0, "b", b)
        X0 = x0.to(b.dtype).unsqueeze(-1) if vector else x0.to(b.dtype)
    return op, B, X0, vector
