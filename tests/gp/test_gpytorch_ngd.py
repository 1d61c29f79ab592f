"""GPyTorch's documented natural-gradient SVGP recipe, run with GPyTorch's lr values on natvi's
``NaturalGradient(model.variational_parameters(), num_data=N)``: the same trajectory as
GPyTorch's ``NGD``, under GPyTorch's ``VariationalStrategy`` and natvi's
``NatviVariationalStrategy``. And the clear error when an ordinary optimiser gets natvi's q."""

from __future__ import annotations

import gpytorch
import pytest
import torch
from gpytorch.variational import (
    NaturalVariationalDistribution,
    UnwhitenedVariationalStrategy,
    VariationalStrategy,
)

from natvi.gp.gpytorch import (
    NatviUnwhitenedVariationalStrategy,
    NatviVariationalDistribution,
    NatviVariationalStrategy,
)
from natvi.optim import NaturalGradient
from natvi.parameterizations import MeanCholesky, Natural

DT = torch.float64


class SVGP(gpytorch.models.ApproximateGP):
    """The model of GPyTorch's "Natural Gradient Descent" example notebook."""

    def __init__(self, Z, variational_distribution, strategy=VariationalStrategy):
        strategy = strategy(self, Z, variational_distribution, learn_inducing_locations=True)
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def _data(task, N=80):
    g = torch.Generator().manual_seed(0)
    X = torch.rand(N, 1, generator=g, dtype=DT) * 4 - 2
    f = torch.sin(3 * X[:, 0])
    if task == "gaussian":
        return X, f + 0.2 * torch.randn(N, generator=g, dtype=DT)
    return X, (f + 0.3 * torch.randn(N, generator=g, dtype=DT) > 0).to(DT)


def _likelihood(task):
    if task == "gaussian":
        return gpytorch.likelihoods.GaussianLikelihood().to(DT)
    return gpytorch.likelihoods.BernoulliLikelihood().to(DT)


def _run(task, natvi: bool, iterations=25, strategy=VariationalStrategy,
         reference_strategy=VariationalStrategy):
    """GPyTorch's recipe: NGD(lr=0.1, num_data=N) on q, Adam(lr=0.01) on the rest (Z, the mean
    and kernel hyperparameters, the likelihood's); natvi's q under ``strategy``, GPyTorch's under
    ``reference_strategy``."""
    X, y = _data(task)
    N, Z = len(y), X[:10].clone()
    torch.manual_seed(0)
    reference = SVGP(Z, NaturalVariationalDistribution(len(Z)), reference_strategy).to(DT)
    reference.train()
    reference(X[:2])  # GPyTorch initialises q from the prior on the first call
    if natvi:
        model = SVGP(Z, NatviVariationalDistribution(len(Z), parameterization=Natural()),
                     strategy).to(DT)
        vd = model.variational_strategy._variational_distribution
        with torch.no_grad():
            ref_vd = reference.variational_strategy._variational_distribution
            vd.q.theta1.copy_(ref_vd.natural_vec)
            vd.q.theta2.copy_(ref_vd.natural_mat)
        model.variational_strategy.variational_params_initialized.fill_(1)
        ngd = NaturalGradient(model.variational_parameters(), num_data=N, lr=0.1)
    else:
        model = reference
        ngd = gpytorch.optim.NGD(model.variational_parameters(), num_data=N, lr=0.1)
    likelihood = _likelihood(task)
    adam = torch.optim.Adam([{"params": model.hyperparameters()},
                             {"params": likelihood.parameters()}], lr=0.01)
    mll = gpytorch.mlls.VariationalELBO(likelihood, model, num_data=N)
    model.train()
    likelihood.train()
    losses = []
    for _ in range(iterations):
        ngd.zero_grad()
        adam.zero_grad()
        loss = -mll(model(X), y)
        loss.backward()
        ngd.step()
        adam.step()
        losses.append(loss.detach())
    q = model.variational_strategy.variational_distribution
    return torch.stack(losses), q.mean.detach(), q.covariance_matrix.detach()


@pytest.mark.parametrize("strategy, reference", [
    (VariationalStrategy, VariationalStrategy),
    (NatviVariationalStrategy, VariationalStrategy),
    (NatviUnwhitenedVariationalStrategy, UnwhitenedVariationalStrategy),
], ids=lambda c: c.__name__)
@pytest.mark.parametrize("task", ["gaussian", "bernoulli"])
def test_gpytorch_lr_values_give_gpytorch_ngd_trajectory(task, strategy, reference):
    ours = _run(task, natvi=True, strategy=strategy, reference_strategy=reference)
    theirs = _run(task, natvi=False, reference_strategy=reference)
    assert float(theirs[0][-1]) < float(theirs[0][0]) - 0.05  # the recipe does learn
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("strategy", [VariationalStrategy, NatviVariationalStrategy,
                                      NatviUnwhitenedVariationalStrategy], ids=lambda c: c.__name__)
def test_lr_one_with_num_data_is_the_conjugate_optimum_on_a_per_datum_loss(strategy):
    X, y = _data("gaussian")
    N, Z = len(y), X[:10].clone()
    model = SVGP(Z, NatviVariationalDistribution(len(Z), dtype=DT), strategy).to(DT)
    likelihood = _likelihood("gaussian")
    mll = gpytorch.mlls.VariationalELBO(likelihood, model, num_data=N)
    opt = NaturalGradient(model.variational_parameters(), num_data=N, lr=1.0)
    model.train()
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = -mll(model(X), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[1] < losses[0]
    assert losses[2] == pytest.approx(losses[1], rel=1e-12, abs=0)  # one step: the optimum


def test_an_ordinary_optimiser_on_constrained_q_coordinates_fails_before_any_step():
    X, y = _data("bernoulli")
    model = SVGP(X[:10].clone(), NatviVariationalDistribution(10, dtype=DT)).to(DT)
    adam = torch.optim.Adam(model.parameters(), lr=0.01)
    loss = model(X).mean.sum()  # (the first call also initialises q from the prior)
    loss.backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="NaturalGradient.*num_data"):
        adam.step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    # unconstrained coordinates (an Adam baseline) are allowed
    baseline = SVGP(X[:10].clone(),
                    NatviVariationalDistribution(10, parameterization=MeanCholesky(), dtype=DT))
    torch.optim.SGD(baseline.to(DT).parameters(), lr=0.01).step()


@pytest.mark.parametrize("strategy", [VariationalStrategy, NatviVariationalStrategy,
                                      NatviUnwhitenedVariationalStrategy], ids=lambda c: c.__name__)
def test_elbo_and_natural_step_do_not_depend_on_gpytorchs_max_cholesky_size(strategy):
    """Above ``max_cholesky_size`` (800 by default) GPyTorch treats a dense covariance with CG and
    a stochastic log det; natvi hands it S as a Cholesky factor, so the loss and the natural step
    are exact at every M. Forced here at M = 10 by setting the threshold to 0."""

    def one_step(threshold):
        X, y = _data("bernoulli")
        torch.manual_seed(0)
        model = SVGP(X[:10].clone(), NatviVariationalDistribution(10, dtype=DT), strategy).to(DT)
        mll = gpytorch.mlls.VariationalELBO(_likelihood("bernoulli"), model, num_data=len(y))
        opt = NaturalGradient(model.variational_parameters(), num_data=len(y), lr=0.5)
        model.train()
        with gpytorch.settings.max_cholesky_size(threshold):
            loss = -mll(model(X), y)
            loss.backward()
            opt.step()
        q = model.variational_strategy.variational_distribution
        return loss.detach(), q.mean.detach(), q.covariance_matrix.detach()

    for a, b in zip(one_step(0), one_step(10**6)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
