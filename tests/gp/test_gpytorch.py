"""Parity with GPyTorch (same kernel, Z, q, Bernoulli) and the GPyTorch interop distribution."""

from __future__ import annotations

import gpytorch
import pytest
import torch
from gpytorch.variational import CholeskyVariationalDistribution, VariationalStrategy

from natvi import natural_gradient
from natvi.gp import SVGP
from natvi.gp.gpytorch import NatviVariationalDistribution
from natvi.likelihoods import Bernoulli
from natvi.parameterizations import BUILTIN, MeanCholesky, Natural
from tests.gp.problems import DT, JITTER, NOISE, data, random_q, rbf
from tests.gp.test_conjugate import titsias

JIT = 1e-8


class GPModel(gpytorch.models.ApproximateGP):
    def __init__(self, Z, q_u, kernel, jitter=JIT):
        super().__init__(VariationalStrategy(self, Z, q_u, jitter_val=jitter))
        self.mean_module = gpytorch.means.ZeroMean()
        self.covar_module = kernel

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x),
                                                         self.covar_module(x))


@pytest.fixture
def exact_log_cdf(monkeypatch):
    """GPyTorch's Bernoulli with an exact log Φ (see the parity test)."""
    monkeypatch.setattr(gpytorch.likelihoods.bernoulli_likelihood, "log_normal_cdf",
                        torch.special.log_ndtr)


def _moons(N=200):
    from sklearn.datasets import make_moons
    X, y = make_moons(N, noise=0.2, random_state=0)
    return torch.tensor(X, dtype=DT), torch.tensor(y, dtype=DT)


def _gpytorch_elbo(model, likelihood, X, y):
    model.train()
    likelihood.train()
    mll = gpytorch.mlls.VariationalELBO(likelihood, model, num_data=len(y))
    return mll(model(X), y) * len(y)


def _parity(X, y):
    """natvi's SVGP ELBO and GPyTorch's VariationalELBO × N for the same kernel, Z, q."""
    Z = X[::20].clone()
    kernel = rbf()
    ours = SVGP(kernel=kernel, likelihood=Bernoulli(), inducing_points=Z,
                parameterization=MeanCholesky(), jitter=JIT)
    random_q(ours)
    q_u = CholeskyVariationalDistribution(len(Z)).to(DT)
    theirs = GPModel(Z, q_u, kernel).to(DT)
    with torch.no_grad():
        m, L = ours.q.xi()
        q_u.variational_mean.copy_(m)
        q_u.chol_variational_covar.copy_(L)
    theirs.variational_strategy.variational_params_initialized.fill_(1)
    ref = _gpytorch_elbo(theirs, gpytorch.likelihoods.BernoulliLikelihood(), X, y)
    return ours.elbo(X, y), ref


def test_svgp_elbo_equals_gpytorch_variational_elbo_times_n(monkeypatch):
    """To 1e-6 once GPyTorch's log Φ is exact: its ``log_normal_cdf`` is off by up to ~5e-5 for
    arguments in [-3, -2] (checked below), which alone moves its ELBO by ~1e-4 relative."""
    X, y = _moons()
    ours, stock = _parity(X, y)
    monkeypatch.setattr(gpytorch.likelihoods.bernoulli_likelihood, "log_normal_cdf",
                        torch.special.log_ndtr)
    ours2, exact = _parity(X, y)
    torch.testing.assert_close(ours2, exact, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours, ours2, rtol=1e-14, atol=0)
    assert 1e-6 < float(((stock - exact) / exact).abs().detach()) < 1e-3


def test_gpytorch_log_normal_cdf_is_what_differs():
    from gpytorch.functions import log_normal_cdf

    z = torch.tensor([-2.5], dtype=DT)
    assert float((log_normal_cdf(z) - torch.special.log_ndtr(z)).abs()) > 1e-6


@pytest.mark.parametrize("cls", BUILTIN, ids=lambda c: c.__name__)
def test_interop_distribution_gives_the_natvi_elbo_in_every_parameterization(cls, exact_log_cdf):
    p = cls()
    X, y = _moons()
    Z = X[::20].clone()
    kernel = rbf()
    ours = SVGP(kernel=kernel, likelihood=Bernoulli(), inducing_points=Z, parameterization=p,
                q_diag=p.diagonal, jitter=JIT)
    random_q(ours)
    q_u = NatviVariationalDistribution(len(Z), parameterization=p, dtype=DT)
    theirs = GPModel(Z, q_u, kernel).to(DT)
    theirs.variational_strategy.variational_params_initialized.fill_(1)
    with torch.no_grad():
        q_u.q.set_meancov(*ours.q.meancov())
    assert {id(t) for t in theirs.variational_parameters()} == {id(t) for t in q_u.q.parameters()}
    assert not {id(t) for t in theirs.hyperparameters()} & {id(t) for t in q_u.q.parameters()}
    ref = _gpytorch_elbo(theirs, gpytorch.likelihoods.BernoulliLikelihood(), X, y)
    torch.testing.assert_close(ours.elbo(X, y), ref, rtol=1e-6, atol=0)


def test_interop_one_natural_step_reaches_titsias_optimum_inside_gpytorch():
    X, y = data(N=40)
    Z = torch.linspace(-2, 2, 7, dtype=DT).unsqueeze(-1)
    q_u = NatviVariationalDistribution(len(Z), parameterization=Natural(), dtype=DT)
    model = GPModel(Z, q_u, rbf(), jitter=JITTER).to(DT)
    lik = gpytorch.likelihoods.GaussianLikelihood().to(DT)
    lik.noise = torch.tensor(NOISE, dtype=DT)
    xi = q_u.q.xi()
    grads = torch.autograd.grad(-_gpytorch_elbo(model, lik, X, y), xi)
    with torch.no_grad():
        for t, s in zip(xi, natural_gradient(q_u.parameterization, xi, grads)):
            t.sub_(s)
        m_u, S_u, _ = titsias(X, y, Z)
        Kzz = model.covar_module(Z).to_dense() + JITTER * torch.eye(len(Z), dtype=DT)
        L = torch.linalg.cholesky(Kzz)
        m, S = q_u.q.meancov()
        # GPyTorch also adds the jitter to q(f)'s variances: a constant that moves no optimum.
        torch.testing.assert_close(L @ m, m_u, rtol=0, atol=1e-8)
        torch.testing.assert_close(L @ S @ L.T, S_u, rtol=0, atol=1e-8)


def test_interop_trains_and_predicts_in_a_gpytorch_model():
    X, y = _moons(100)
    q_u = NatviVariationalDistribution(10, parameterization=Natural(), dtype=DT)
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()).to(DT)
    model = GPModel(X[::10].clone(), q_u, kernel).to(DT)
    lik = gpytorch.likelihoods.BernoulliLikelihood()
    adam = torch.optim.Adam(model.hyperparameters(), lr=0.05)
    start = float(_gpytorch_elbo(model, lik, X, y).detach())
    for _ in range(15):
        adam.zero_grad()
        loss = -_gpytorch_elbo(model, lik, X, y)
        loss.backward()
        xi = q_u.q.xi()
        with torch.no_grad():
            for t, s in zip(xi, natural_gradient(q_u.parameterization, xi,
                                                 [t.grad for t in xi])):
                t.sub_(0.5 * s)
            for t in xi:
                t.grad = None
        adam.step()
    end = float(_gpytorch_elbo(model, lik, X, y).detach())
    assert end > start + 10.0, (start, end)
    model.eval()
    with torch.no_grad():
        p = lik(model(X)).probs
    assert ((p > 0.5).to(DT) == y).to(DT).mean() > 0.85
