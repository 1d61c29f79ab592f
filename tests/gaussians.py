"""Random valid Gaussians and the custom parameterisations the tests use (test-only code)."""

from __future__ import annotations

import torch

from natvi.expfam import natural_to_meancov
from natvi.parameterizations import DiagParameterization, Parameterization


def random_meancov(batch, M, *, diagonal=False, cond=10.0, dtype=torch.float64, generator=None):
    """Random ``(m [*batch, M], S)`` with S's eigenvalues spread over ``[1, cond]``."""
    g = generator or torch.Generator().manual_seed(0)
    m = torch.randn(*batch, M, generator=g, dtype=dtype)
    if diagonal:
        return m, torch.exp(
            torch.rand(*batch, M, generator=g, dtype=dtype)
            * torch.log(torch.tensor(cond, dtype=dtype))
        )
    Q, _ = torch.linalg.qr(torch.randn(*batch, M, M, generator=g, dtype=dtype))
    ev = torch.logspace(0, float(torch.log10(torch.tensor(cond))), M, dtype=dtype)
    return m, (Q * ev) @ Q.mT


class MeanPrecisionCholesky(Parameterization):
    """Test-only: ξ = (m, L_P) with precision P = L_P L_Pᵀ. Defines only the two maps."""

    names = ("m", "L_P")

    def to_natural(self, m, L_P):
        L_P = L_P.tril()
        P = L_P @ L_P.mT
        return (P @ m.unsqueeze(-1)).squeeze(-1), -0.5 * P

    def from_natural(self, theta1, theta2):
        m, _ = natural_to_meancov(theta1, theta2)
        return m, torch.linalg.cholesky(-2.0 * theta2)


class DiagMeanLogPrecision(DiagParameterization):
    """Test-only diagonal: ξ = (m, log p) with p the precision. Defines only the two maps."""

    names = ("m", "log_prec")

    def to_natural(self, m, log_p):
        p = log_p.exp()
        return m * p, -0.5 * p

    def from_natural(self, theta1, theta2):
        p = -2.0 * theta2
        return theta1 / p, p.log()
