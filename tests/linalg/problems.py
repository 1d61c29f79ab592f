"""Test problems with known answers for the solvers (test-only code)."""

from __future__ import annotations

import torch

from natvi.linalg import LowRankPlusDiag


def spd(n, cond=10.0, batch=(), dtype=torch.float64, seed=0):
    """Random SPD ``[*batch, n, n]`` with eigenvalues log-spaced over ``[1, cond]``."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(*batch, n, n, generator=g, dtype=dtype))
    ev = torch.logspace(0, float(torch.log10(torch.tensor(cond))), n, dtype=dtype)
    return (Q * ev) @ Q.mT


def low_rank_plus_diag(n, r, damping=0.5, batch=(), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(*batch, n, r, generator=g, dtype=dtype) / r**0.5
    return LowRankPlusDiag(damping, U)


def rhs(shape, dtype=torch.float64, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
