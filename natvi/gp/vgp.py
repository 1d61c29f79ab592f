"""Full variational GP: q over the latent function at the N training inputs (O(N³) per call)."""

from __future__ import annotations

import gpytorch
import torch
from torch import Tensor

from natvi.gp.base import VariationalGP, resolve_parameterization
from natvi.gp.conditionals import (
    kernel_diag,
    kernel_matrix,
    marginals,
    whiten_q,
    whitened_kl,
)
from natvi.likelihoods.base import Likelihood
from natvi.parameterizations import Parameterization

__all__ = ["VGP"]


class VGP(VariationalGP):
    """Variational GP with ``q(f) = N(m, S)`` over ``f = f(X) ∈ R^N`` at the training inputs.

    Prior ``p(f) = N(μ(X), K_xx + jitter·I)`` with ``K_xx + jitter·I = L Lᵀ``. Unwhitened (the
    default) ``q`` is directly over ``f − μ(X)``; whitened, over ``v`` with ``f = μ(X) + L v``.
    At the training inputs the marginals are ``(μ + m, diag S)`` (whitened:
    ``(μ + L m, diag(L S Lᵀ))``); elsewhere the GP conditional on ``f`` is used as in
    :class:`~natvi.gp.SVGP` with ``Z = X``. With a Gaussian likelihood the optimum of the ELBO
    is the exact GP posterior. ``elbo(X, y)`` must be called with the training inputs.

    Args:
        X: training inputs ``[N, D]`` (fixes dtype and device).
        kernel, likelihood, mean, parameterization, num_latent, q_diag, jitter: as in
            :class:`~natvi.gp.SVGP`.
        whiten: hold ``q`` over whitened ``v`` (default ``False``).

    Example:
        >>> model = VGP(X, kernel=gpytorch.kernels.RBFKernel(), likelihood=Gaussian(0.1))
        >>> elbo = model.elbo(X, y)
    """

    needs_full_batch = True

    def __init__(
        self,
        X: Tensor,
        kernel: gpytorch.kernels.Kernel,
        likelihood: Likelihood,
        mean: gpytorch.means.Mean | None = None,
        parameterization: Parameterization | None = None,
        num_latent: int = 1,
        q_diag: bool | None = None,
        whiten: bool = False,
        jitter: float | None = None,
    ) -> None:
        super().__init__(kernel, likelihood, mean, num_latent, jitter)
        X = self._check_X(X)
        if not X.is_floating_point():
            raise ValueError(f"X must be a floating-point tensor; got {X.dtype}.")
        parameterization = resolve_parameterization(parameterization, q_diag)
        self.whiten = bool(whiten)
        self.q_diag = parameterization.diagonal
        self.register_buffer("X", X.detach().clone())
        self.to(dtype=X.dtype, device=X.device)
        self.q = self._init_q(parameterization)

    _prior_name = "K_xx"

    def _prior_points(self) -> Tensor:
        return self.X

    def _qf_and_kl(self, X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if X.shape != self.X.shape or not torch.equal(X, self.X):
            raise ValueError(
                "VGP.elbo needs the training inputs X the model was built with (q lives at those "
                "points); use SVGP for minibatches or new inputs."
            )
        L = self._chol_prior()
        m, S, logdet_S = self.q.moments()
        m_t, S_t, logdet = whiten_q(m, S, None if self.whiten else L, self.q_diag, logdet_S)
        diag = self.q_diag and self.whiten
        if not self.whiten:
            mean, var = m, (S if self.q_diag else S.diagonal(dim1=-2, dim2=-1))
        elif self.q_diag:
            mean, var = (L @ m.unsqueeze(-1)).squeeze(-1), (L.square() * S.unsqueeze(-2)).sum(-1)
        else:
            mean, var = (L @ m.unsqueeze(-1)).squeeze(-1), ((L @ S) * L).sum(-1)
        return self._plus_prior_mean(mean, X), var, whitened_kl(m_t, S_t, logdet, diag)

    def predict_f(self, X: Tensor) -> tuple[Tensor, Tensor]:
        X = self._check_X(X)
        L = self._chol_prior()
        m_t, S_t, _, diag = self._whitened_q(L)
        K_xs = kernel_matrix(self.kernel, self.X, X)
        mean, var = marginals(L, K_xs, kernel_diag(self.kernel, X), m_t, S_t, diag)
        mean = self._plus_prior_mean(mean, X)
        return self._to_lik(mean), self._to_lik(var)

    def extra_repr(self) -> str:
        return (
            f"num_data={self.X.shape[0]}, num_latent={self.num_latent}, whiten={self.whiten}, "
            f"q_diag={self.q_diag}"
        )
