"""GPyTorch interop: a variational distribution whose q(u) lives in any natvi parameterisation.

A GPyTorch user switches to natvi's natural gradients by changing two lines of a standard
``ApproximateGP``: the variational distribution, and the optimiser of the variational parameters::

    class GPModel(gpytorch.models.ApproximateGP):
        def __init__(self, Z):
            q_u = NatviVariationalDistribution(Z.size(0), parameterization=Natural())  # line 1
            strategy = gpytorch.variational.VariationalStrategy(self, Z, q_u)
            super().__init__(strategy)
            ...

    ngd = natvi.optim.NaturalGradient(model.variational_parameters(), lr=0.1)     # line 2
    adam = torch.optim.Adam(model.hyperparameters(), lr=0.01)

q(u) is held by a :class:`natvi.GaussianVariational` submodule (``.q``), which is what natvi's
natural-gradient optimiser looks for; its parameters are named ``...variational_...`` so that
``ApproximateGP.variational_parameters()`` / ``hyperparameters()`` split them as usual. With
GPyTorch's whitened ``VariationalStrategy`` q is over the whitened ``v``; with
``UnwhitenedVariationalStrategy`` over ``u``.
"""

from __future__ import annotations

import torch
from gpytorch.distributions import MultivariateNormal
from gpytorch.variational import _VariationalDistribution
from linear_operator.operators import DenseLinearOperator, DiagLinearOperator

from natvi.parameterizations import Natural, Parameterization
from natvi.variational import GaussianVariational

__all__ = ["NatviVariationalDistribution"]


class _GPyTorchGaussianVariational(GaussianVariational):
    """The q held inside GPyTorch: registered as a virtual ``_VariationalDistribution`` so that
    GPyTorch's ``variational_parameters()`` (which only looks at parameters sitting directly on
    such modules) yields ξ and ``hyperparameters()`` skips them."""


_VariationalDistribution.register(_GPyTorchGaussianVariational)


class NatviVariationalDistribution(_VariationalDistribution):
    """``q(u) = N(m, S)`` over ``[*batch_shape, M]`` held in a natvi parameterisation.

    Args:
        num_inducing_points: M.
        batch_shape: GPyTorch batch shape (e.g. ``torch.Size([L])`` for L independent latents).
        parameterization: any :class:`natvi.parameterizations.Parameterization` (default
            ``Natural()``); a diagonal one gives a mean-field q (GPyTorch's
            ``MeanFieldVariationalDistribution`` analogue).
        mean_init_std: GPyTorch's initial jitter of the mean around the prior mean.
        dtype, device: of the parameters (``model.to(...)`` moves them later as usual).

    ``forward()`` returns ``MultivariateNormal(m, S)`` computed afresh from ξ, so gradients reach
    the parameters. GPyTorch calls :meth:`initialize_variational_distribution` (q ← prior, mean
    jittered) on the first training call; to keep a q you set yourself, fill the strategy's
    ``variational_params_initialized`` buffer with 1.
    """

    def __init__(
        self,
        num_inducing_points: int,
        batch_shape: tuple[int, ...] = (),
        parameterization: Parameterization | None = None,
        mean_init_std: float = 1e-3,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(num_inducing_points, torch.Size(batch_shape), mean_init_std)
        self.q = _GPyTorchGaussianVariational(
            num_inducing_points,
            tuple(batch_shape),
            parameterization if parameterization is not None else Natural(),
            dtype=dtype,
            device=device,
        )

    @property
    def parameterization(self) -> Parameterization:
        return self.q.parameterization

    def forward(self) -> MultivariateNormal:
        m, S = self.q.meancov()
        if self.parameterization.diagonal:
            return MultivariateNormal(m, DiagLinearOperator(S))
        return MultivariateNormal(m, DenseLinearOperator(S))

    @torch.no_grad()
    def initialize_variational_distribution(self, prior_dist: MultivariateNormal) -> None:
        """q ← prior, with the mean jittered by ``mean_init_std`` (as GPyTorch's own classes)."""
        shape = self.shape()
        mean = prior_dist.mean.expand(shape)
        mean = mean + self.mean_init_std * torch.randn_like(mean)
        cov = prior_dist.covariance_matrix.expand(*shape, shape[-1])
        if self.parameterization.diagonal:
            cov = cov.diagonal(dim1=-2, dim2=-1)
        self.q.set_meancov(mean.to(self.dtype), cov.to(self.dtype))
