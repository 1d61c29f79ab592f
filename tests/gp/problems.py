"""Small regression / classification problems and dense references for the GP tests."""

from __future__ import annotations

import gpytorch
import torch

from natvi.gp import SVGP, VGP
from natvi.likelihoods import Gaussian

DT = torch.float64
NOISE = 0.1
JITTER = 1e-6


def data(N: int = 20, D: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(N, D, generator=g, dtype=DT) * 4 - 2
    y = torch.sin(2 * X).sum(-1) + 0.3 * torch.randn(N, generator=g, dtype=DT)
    return X, y


def rbf(lengthscale: float = 0.7, outputscale: float = 1.3, batch=()) -> gpytorch.kernels.Kernel:
    k = gpytorch.kernels.ScaleKernel(
        gpytorch.kernels.RBFKernel(batch_shape=torch.Size(batch)), batch_shape=torch.Size(batch)
    ).to(DT)
    k.base_kernel.lengthscale = torch.tensor(lengthscale, dtype=DT)  # float64, not via float32
    k.outputscale = torch.tensor(outputscale, dtype=DT)
    return k


def svgp(X, Z, whiten=True, parameterization=None, q_diag=False, likelihood=None, **kw) -> SVGP:
    lik = likelihood if likelihood is not None else Gaussian(noise=NOISE)
    return SVGP(kernel=rbf(), likelihood=lik, inducing_points=Z, whiten=whiten,
                parameterization=parameterization, q_diag=q_diag, jitter=JITTER, **kw)


def vgp(X, whiten=False, parameterization=None) -> VGP:
    return VGP(X, kernel=rbf(), likelihood=Gaussian(noise=NOISE), whiten=whiten,
               parameterization=parameterization, jitter=JITTER)


def dense_k(X1, X2) -> torch.Tensor:
    """The kernel of :func:`rbf` written out by hand."""
    d2 = ((X1.unsqueeze(-2) - X2.unsqueeze(-3)) ** 2).sum(-1)
    return 1.3 * torch.exp(-0.5 * d2 / 0.7**2)


def random_q(model, seed: int = 1) -> None:
    """Move ``model.q`` to a random valid Gaussian (away from the prior)."""
    g = torch.Generator().manual_seed(seed)
    M = model.q.num_inducing
    shape = (*model.q.batch_shape, M)
    m = torch.randn(shape, generator=g, dtype=DT)
    if model.q.parameterization.diagonal:
        model.q.set_meancov(m, 0.2 + torch.rand(shape, generator=g, dtype=DT))
        return
    B = torch.randn(*shape, M, generator=g, dtype=DT) / M**0.5
    model.q.set_meancov(m, B @ B.mT + 0.3 * torch.eye(M, dtype=DT))
