"""Linear solvers behind one protocol: ``solver.solve(A, b, x0=None) -> SolveResult``.

- :class:`Cholesky` — dense direct reference;
- :class:`CG` — matrix-free (preconditioned) conjugate gradients;
- :class:`Woodbury` — exact solves with ``D + U Vᵀ`` (:class:`LowRankPlusDiag`);
- :class:`OU` — the thermodynamic (Ornstein–Uhlenbeck) solver, sampler and inverter.

``A`` is a dense SPD tensor ``[..., n, n]`` or an operator (:class:`Operator` for a product
function, :class:`LowRankPlusDiag` for damped low-rank curvature); ``b`` is ``[..., n]`` or
``[..., n, k]`` (``k`` right-hand sides as columns). See :mod:`natvi.linalg.base`.
"""

from natvi.linalg.base import (
    DenseOperator,
    LinearOperator,
    LowRankPlusDiag,
    Operator,
    Solver,
    SolveResult,
    as_operator,
)
from natvi.linalg.cg import CG
from natvi.linalg.device_model import DeviceModel
from natvi.linalg.direct import Cholesky
from natvi.linalg.ou import OU, max_eigenvalue
from natvi.linalg.woodbury import Woodbury

__all__ = [
    "Solver",
    "SolveResult",
    "LinearOperator",
    "Operator",
    "DenseOperator",
    "LowRankPlusDiag",
    "as_operator",
    "Cholesky",
    "CG",
    "Woodbury",
    "OU",
    "DeviceModel",
    "max_eigenvalue",
]
