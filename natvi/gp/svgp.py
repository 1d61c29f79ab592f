"""Sparse variational GP (Hensman et al. 2013/2015) with q(u) in any parameterisation."""

from __future__ import annotations

import gpytorch
import torch
from torch import Tensor, nn

from natvi._validation import check_finite
from natvi.gp.base import VariationalGP, _same, _snapshot, resolve_parameterization
from natvi.gp.conditionals import (
    cross_kernel_block,
    kernel_diag,
    marginals,
    solve_block,
)
from natvi.gp.fused import fused_elbo
from natvi.likelihoods.base import Likelihood
from natvi.parameterizations import Natural, Parameterization

__all__ = ["SVGP"]


class SVGP(VariationalGP):
    """Sparse variational GP: ``M`` inducing inputs ``Z``, ``q(u) = N(m, S)``, ``u = f(Z)``.

    With ``K_zz + jitter·I = L_zz L_zzᵀ`` and ``A = L_zz⁻¹ K_zx``, whitened (``u = L_zz v``,
    ``q`` over ``v``, prior ``N(0, I)``) or not (``q`` over ``u``, prior ``N(0, K_zz)``):

        q(f_n) = N(μ(x_n) + A_nᵀ m̃,  k(x_n, x_n) + A_nᵀ (S̃ − I) A_n)
        ELBO   = (N/B) Σ_n E_{q(f_n)}[log p(y_n | f_n)] − KL(q(u) ‖ p(u))

    (``m̃, S̃`` the whitened q; see :mod:`natvi.gp.conditionals`). One Cholesky of ``K_zz`` per
    call, no ``N × N`` matrix. The ELBO is computed afresh from ``model.q``'s ξ at every call, so
    a natural-gradient optimiser can read the gradients of ξ.

    Multi-latent models (``num_latent = L > 1``: multi-class, heteroskedastic) hold ``q`` with
    ``batch_shape (L,)`` (``m [L, M]``, ``S [L, M, M]``) and share the inducing inputs ``Z``; the
    kernel either has ``batch_shape (L,)`` (independent hyperparameters per latent) or ``()``
    (one kernel shared by all latents; the latents are still independent a priori).

    Args:
        kernel: a ``gpytorch.kernels.Kernel`` (cast to ``Z``'s dtype and device).
        likelihood: a :class:`natvi.likelihoods.Likelihood` with ``num_latent`` latents.
        inducing_points: ``Z [M, D]``; fixes the model's dtype and device.
        whiten: hold ``q`` over whitened ``v`` (default) or over ``u``.
        parameterization: coordinates of ``q`` (default ``Natural()``, ``DiagNatural()`` when
            ``q_diag``).
        num_latent: number of latent functions ``L``.
        mean: a ``gpytorch.means.Mean`` (default zero).
        q_diag: mean-field ``q`` (a diagonal parameterisation); ``None`` (default) follows
            ``parameterization`` (full when it is not given).
        learn_inducing: whether ``Z`` is a learnable hyperparameter.
        jitter: see :class:`~natvi.gp.base.VariationalGP`.

    ``q`` starts at the prior: ``N(0, I)`` whitened, ``N(0, K_zz + jitter·I)`` (``diag``
    thereof if ``q_diag``) unwhitened.

    Example:
        >>> k = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())
        >>> model = SVGP(kernel=k, likelihood=Bernoulli(), inducing_points=X[:50].clone())
        >>> loss = -model.elbo(X, y)
    """

    def __init__(
        self,
        kernel: gpytorch.kernels.Kernel,
        likelihood: Likelihood,
        inducing_points: Tensor,
        whiten: bool = True,
        parameterization: Parameterization | None = None,
        num_latent: int = 1,
        mean: gpytorch.means.Mean | None = None,
        q_diag: bool | None = None,
        learn_inducing: bool = True,
        jitter: float | None = None,
    ) -> None:
        super().__init__(kernel, likelihood, mean, num_latent, jitter)
        Z = inducing_points
        check_finite("inducing_points", Z)
        if Z.dim() != 2 or not Z.is_floating_point():
            raise ValueError(
                f"inducing_points must be a floating-point tensor [M, D]; got {tuple(Z.shape)}, "
                f"{Z.dtype}."
            )
        parameterization = resolve_parameterization(parameterization, q_diag)
        self.whiten = bool(whiten)
        self.q_diag = parameterization.diagonal
        if learn_inducing:
            self.inducing_points = nn.Parameter(Z.detach().clone())
        else:
            self.register_buffer("inducing_points", Z.detach().clone())
        self.to(dtype=Z.dtype, device=Z.device)
        self.q = self._init_q(parameterization)

    @property
    def num_inducing(self) -> int:
        return self.inducing_points.shape[0]

    _prior_name = "K_zz"

    def _prior_points(self) -> Tensor:
        return self.inducing_points

    def _conditional(self, X: Tensor, L_zz: Tensor, solved: tuple[Tensor, Tensor] | None = None
                     ) -> tuple[Tensor, Tensor, Tensor]:
        m_t, S_t, logdet, diag = self._whitened_q(L_zz)
        if solved is not None:
            mean, var, kl = marginals(L_zz, None, solved[1], m_t, S_t, diag, solved=solved[0],
                                      logdet=logdet)
        else:
            K_zx, owned = cross_kernel_block(self.kernel, self.inducing_points, X)
            mean, var, kl = marginals(L_zz, K_zx, kernel_diag(self.kernel, X), m_t, S_t, diag,
                                      overwrite_K=owned, logdet=logdet)
        return self._plus_prior_mean(mean, X), var, kl

    def _fused_elbo(self, X: Tensor, y: Tensor, num_data: int | None) -> Tensor | None:
        # One node (natvi.gp.fused) for an unbatched q in natural coordinates: with the block
        # kept (fixed prior, from its second call), or solved in the node from the factor and
        # the cross block, which carry any hyperparameter gradient.
        q, lik = self.q, self.likelihood
        if not (self.num_latent == 1 and type(q.parameterization) is Natural and y.dim() == 1
                and lik.has_expectation_terms
                and not torch._C._are_functorch_transforms_active()):
            return None
        L_zz = solved = None
        if "prior" in self._kept():
            L_zz = self._chol_prior()
            solved = self._solved_block(X, L_zz)
        if solved is None and L_zz is None:
            L_zz = self._chol_prior()
        if L_zz.dim() != 2:  # (a kernel with a batch shape of its own: node by node; reading
            return None  # kernel.batch_shape instead would cost a module traversal per call)
        y = lik.check_y(y)
        prior_mean = None if type(self.mean) is gpytorch.means.ZeroMean else self.mean(X)
        scale = None if num_data is None else float(num_data) / X.shape[0]
        if solved is not None:
            return fused_elbo(*q.xi(), solved[1], prior_mean, lik, y, scale, A_t=solved[0],
                              whiten_L=None if self.whiten else L_zz)
        K_zx, owned = cross_kernel_block(self.kernel, self.inducing_points, X)
        return fused_elbo(*q.xi(), kernel_diag(self.kernel, X), prior_mean, lik, y, scale,
                          L_zz=L_zz, K_zx=K_zx, whiten_L=None if self.whiten else L_zz,
                          overwrite=owned)

    def _qf_and_kl(self, X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        L_zz = self._chol_prior()
        return self._conditional(X, L_zz, self._solved_block(X, L_zz))

    def _solved_block(self, X: Tensor, L_zz: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(Aᵀ = (L_zz⁻¹ K_zx)ᵀ [*b, N, M], k(x, x) [*b, N])`` of the inputs, kept with a
        fixed prior while ``X`` is equal by value (one entry: the last inputs); ``None`` when
        the prior is not fixed or a gradient flows to ``X``."""
        kept = self._kept()
        prior = kept.get("prior")
        if prior is None or prior[1] is not L_zz or (torch.is_grad_enabled() and X.requires_grad):
            return None
        block = kept.get("block")
        if block is not None and _same(block[0], (X,)):
            return block[1]
        with torch.no_grad():
            K_zx, owned = cross_kernel_block(self.kernel, self.inducing_points, X)
            solved = solve_block(L_zz, K_zx, owned), kernel_diag(self.kernel, X)
        kept["block"] = (_snapshot((X,)), solved)
        return solved

    def predict_f(self, X: Tensor) -> tuple[Tensor, Tensor]:
        X = self._check_X(X)
        mean, var, _ = self._conditional(X, self._chol_prior())
        return self._to_lik(mean), self._to_lik(var)

    def extra_repr(self) -> str:
        return (
            f"num_inducing={self.num_inducing}, num_latent={self.num_latent}, "
            f"whiten={self.whiten}, q_diag={self.q_diag}"
        )
