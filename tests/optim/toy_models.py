"""Small models with known answers for optimiser tests (test-only code).

Both follow the model contract of natvi's GP models: ``elbo(X, y, num_data=None)`` (total ELBO,
a minibatch scaled by N/B), ``hyperparameters()``, ``variational_parameters()`` and q held in a
``GaussianVariational`` at ``model.q``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from natvi.variational import GaussianVariational


def _kl_to_isotropic(m, S, prior_var, diagonal):
    """``KL(N(m, S) ‖ N(0, prior_var I))`` per batch element."""
    M = m.shape[-1]
    if diagonal:
        tr, logdet = S.sum(-1), S.log().sum(-1)
    else:
        tr = S.diagonal(dim1=-2, dim2=-1).sum(-1)
        logdet = 2.0 * torch.linalg.cholesky(S).diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (tr / prior_var + (m * m).sum(-1) / prior_var - M + M * torch.log(torch.as_tensor(prior_var)) - logdet)


def _f_moments(q, X, diagonal):
    """``q(f_n)`` for ``f = X w``: means and variances ``[L, B]`` (``L`` outputs)."""
    m, S = q.meancov()
    m, S = m.reshape(-1, m.shape[-1]), S.reshape(-1, *S.shape[-(1 if diagonal else 2):])
    mean = m @ X.mT
    var = S @ (X * X).mT if diagonal else ((X @ S) * X).sum(-1)
    return mean, var


class BayesLinReg(nn.Module):
    """``y_{n,l} = x_nᵀ w_l + ε``, ``w_l ~ N(0, prior_var I)``, ``ε ~ N(0, σ²)``; q(w) Gaussian.

    ``y`` is ``[N]`` (one output) or ``[N, L]``; q is batched ``[L, D]`` for ``L > 1``.
    """

    def __init__(self, D, parameterization=None, num_outputs=1, prior_var=1.0, noise=0.1,
                 dtype=torch.float64):
        super().__init__()
        batch = () if num_outputs == 1 else (num_outputs,)
        self.q = GaussianVariational(D, batch, parameterization, dtype=dtype)
        self.prior_var = prior_var
        self.log_noise = nn.Parameter(torch.tensor(math.log(noise), dtype=dtype))

    def elbo(self, X, y, num_data=None):
        diagonal = self.q.parameterization.diagonal
        mean, var = _f_moments(self.q, X, diagonal)
        yy = y.reshape(X.shape[0], -1).mT
        s2 = self.log_noise.exp()
        ell = -0.5 * math.log(2 * math.pi) - 0.5 * self.log_noise - 0.5 * ((yy - mean) ** 2 + var) / s2
        scale = 1.0 if num_data is None else num_data / X.shape[0]
        m, S = self.q.meancov()
        return scale * ell.sum() - _kl_to_isotropic(m, S, self.prior_var, diagonal).sum()

    def exact_posterior(self, X, y):
        """Mean ``[L, D]`` and covariance ``[L, D, D]`` of p(w | y) (full family)."""
        s2 = self.log_noise.detach().exp()
        D = X.shape[-1]
        P = torch.eye(D, dtype=X.dtype) / self.prior_var + X.mT @ X / s2
        rhs = (X.mT @ y.reshape(X.shape[0], -1)).mT / s2
        S = torch.linalg.inv(P)
        return rhs @ S, S.expand(rhs.shape[0], D, D)

    def hyperparameters(self):
        return [self.log_noise]

    def variational_parameters(self):
        return list(self.q.xi())


class LogisticReg(nn.Module):
    """Bayesian logistic regression, labels in {0, 1}; ELBO by 32-point Gauss–Hermite (no MC)."""

    def __init__(self, D, parameterization=None, prior_var=4.0, dtype=torch.float64):
        super().__init__()
        self.q = GaussianVariational(D, (), parameterization, dtype=dtype)
        self.log_prior_var = nn.Parameter(torch.tensor(math.log(prior_var), dtype=dtype))
        x, w = np.polynomial.hermite.hermgauss(32)
        self.register_buffer("gh_x", torch.tensor(x, dtype=dtype))
        self.register_buffer("gh_w", torch.tensor(w / math.sqrt(math.pi), dtype=dtype))

    def elbo(self, X, y, num_data=None):
        diagonal = self.q.parameterization.diagonal
        mean, var = _f_moments(self.q, X, diagonal)
        f = mean.unsqueeze(-1) + (2.0 * var).sqrt().unsqueeze(-1) * self.gh_x
        sign = (2.0 * y - 1.0).unsqueeze(-1)
        ell = (torch.nn.functional.logsigmoid(sign * f) * self.gh_w).sum(-1)
        scale = 1.0 if num_data is None else num_data / X.shape[0]
        m, S = self.q.meancov()
        kl = _kl_to_isotropic(m, S, self.log_prior_var.exp(), diagonal)
        return scale * ell.sum() - kl.sum()

    def hyperparameters(self):
        return [self.log_prior_var]

    def variational_parameters(self):
        return list(self.q.xi())


def regression_data(N=40, D=3, L=1, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, D, generator=g, dtype=dtype)
    W = torch.randn(D, L, generator=g, dtype=dtype)
    y = X @ W + 0.1 * torch.randn(N, L, generator=g, dtype=dtype)
    return X, (y.squeeze(-1) if L == 1 else y)


def classification_data(N=200, D=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, D, generator=g, dtype=dtype)
    w = torch.tensor([2.0, -1.0, 0.5], dtype=dtype)[:D]
    p = torch.sigmoid(X @ w)
    y = (torch.rand(N, generator=g, dtype=dtype) < p).to(dtype)
    return X, y
