"""natvi's GPyTorch strategies keep ``L_zz`` and the solved cross block while the prior is fixed
(``reuse_fixed_prior``): the same ELBO, gradients and natural-gradient trajectory as
recomputing them (and as GPyTorch's own NGD), no recomputation while nothing changes, and a
recomputation after any change — in place included — to the kernel, the inducing inputs, the
inputs or the jitter."""

from __future__ import annotations

import gpytorch
import pytest
import torch
from gpytorch.variational import (
    IndependentMultitaskVariationalStrategy,
    NaturalVariationalDistribution,
    VariationalStrategy,
)

import natvi.gp.gpytorch as interop
from natvi.gp.gpytorch import (
    NatviUnwhitenedVariationalStrategy,
    NatviVariationalDistribution,
    NatviVariationalStrategy,
)
from natvi.optim import NaturalGradient

DT = torch.float64
M = 8
STRATEGIES = pytest.mark.parametrize(
    "strategy", [NatviVariationalStrategy, NatviUnwhitenedVariationalStrategy],
    ids=["whitened", "unwhitened"])
LATENTS = pytest.mark.parametrize("num_latent", [1, 3], ids=["one-latent", "multitask"])


class GPModel(gpytorch.models.ApproximateGP):
    """Fixed Z, constant mean, scaled RBF with frozen hyperparameters (``learn=False``);
    ``num_latent > 1`` goes through GPyTorch's multitask wrapper (``diag=False``)."""

    def __init__(self, Z, q_u, strategy, num_latent=1, learn=False):
        s = strategy(self, Z, q_u, learn_inducing_locations=learn)
        batch = torch.Size([num_latent] if num_latent > 1 else [])
        if num_latent > 1:
            s = IndependentMultitaskVariationalStrategy(s, num_tasks=num_latent)
        super().__init__(s)
        self.mean_module = gpytorch.means.ConstantMean(batch_shape=batch)
        self.covar_module = gpytorch.kernels.ScaleKernel(
            gpytorch.kernels.RBFKernel(batch_shape=batch), batch_shape=batch)
        with torch.no_grad():
            self.covar_module.base_kernel.lengthscale = 0.8
            self.covar_module.outputscale = 1.3
            self.mean_module.constant.fill_(0.2)
        if not learn:
            for p in self.hyperparameters():
                p.requires_grad_(False)

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def _base(model):
    s = model.variational_strategy
    return getattr(s, "base_variational_strategy", s)


def _data(N=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(N, 2, generator=g, dtype=DT) * 4 - 2
    return X, (torch.sin(2 * X[:, 0]) + X[:, 1] > 0).to(DT)


def _model(strategy, num_latent=1, learn=False, reuse=True):
    X, _ = _data()
    batch = (num_latent,) if num_latent > 1 else ()
    q_u = NatviVariationalDistribution(M, batch_shape=batch, dtype=DT)
    model = GPModel(X[:M].clone(), q_u, strategy, num_latent, learn).to(DT)
    g = torch.Generator().manual_seed(1)
    B = torch.randn(*batch, M, M, generator=g, dtype=DT) / M**0.5
    q_u.q.set_meancov(torch.randn(*batch, M, generator=g, dtype=DT),
                      B @ B.mT + 0.3 * torch.eye(M, dtype=DT))
    _base(model).variational_params_initialized.fill_(1)
    _base(model).reuse_fixed_prior = reuse
    return model


def _likelihood(num_latent):
    if num_latent == 1:
        return gpytorch.likelihoods.BernoulliLikelihood().to(DT)
    return gpytorch.likelihoods.SoftmaxLikelihood(num_classes=num_latent,
                                                  mixing_weights=False).to(DT)


def _labels(y, num_latent):
    return y if num_latent == 1 else (y + (y > 0).to(DT)).long().clamp_max(num_latent - 1)


def _loss_and_grads(model, num_latent, X, y):
    """``−ELBO`` and its gradients to q's parameters (the Monte Carlo softmax seeded)."""
    model.train()
    mll = gpytorch.mlls.VariationalELBO(_likelihood(num_latent), model, num_data=len(y))
    torch.manual_seed(3)
    with gpytorch.settings.num_likelihood_samples(8):
        loss = -mll(model(X), _labels(y, num_latent))
    return loss.detach(), torch.autograd.grad(loss, list(model.variational_parameters()))


def _assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-12)
    for ga, gb in zip(a[1], b[1]):
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)


@pytest.fixture
def solves(monkeypatch):
    """How many times the cross block is solved for keeping."""
    count = [0]
    solve = interop.solve_block

    def counting(*args, **kwargs):
        count[0] += 1
        return solve(*args, **kwargs)

    monkeypatch.setattr(interop, "solve_block", counting)
    return count


@STRATEGIES
@LATENTS
def test_kept_blocks_give_the_recomputed_elbo_and_gradients_and_are_not_recomputed(
        strategy, num_latent, solves):
    X, y = _data()
    kept, fresh = _model(strategy, num_latent), _model(strategy, num_latent, reuse=False)
    want = _loss_and_grads(fresh, num_latent, X, y)
    assert "_natvi_kept_prior" not in _base(fresh).__dict__
    for _ in range(3):
        _assert_same(_loss_and_grads(kept, num_latent, X, y), want)
    assert solves[0] == 1  # solved once, read twice
    assert "_natvi_kept_prior" in _base(kept).__dict__


@STRATEGIES
@LATENTS
def test_a_change_to_kernel_inducing_inputs_inputs_or_jitter_is_seen(strategy, num_latent):
    X, y = _data()
    kept, fresh = _model(strategy, num_latent), _model(strategy, num_latent, reuse=False)
    _loss_and_grads(kept, num_latent, X, y)
    changes = [
        lambda m: m.covar_module.base_kernel.raw_lengthscale.data.add_(0.1),  # (.data: no version)
        lambda m: m.covar_module.raw_outputscale.add_(-0.2),
        lambda m: _base(m).inducing_points.add_(0.05),
        lambda m: setattr(_base(m), "jitter_val", 1e-4),
    ]
    for change in changes:
        with torch.no_grad():
            change(kept)
            change(fresh)
        _assert_same(_loss_and_grads(kept, num_latent, X, y),
                     _loss_and_grads(fresh, num_latent, X, y))
    X2, y2 = _data(N=30, seed=1)  # other inputs (a minibatch)
    _assert_same(_loss_and_grads(kept, num_latent, X2, y2),
                 _loss_and_grads(fresh, num_latent, X2, y2))
    X.add_(0.01)  # the same inputs, changed in place
    _assert_same(_loss_and_grads(kept, num_latent, X, y),
                 _loss_and_grads(fresh, num_latent, X, y))


@STRATEGIES
def test_learned_hyperparameters_or_inducing_inputs_are_never_kept(strategy):
    X, y = _data()
    for learn in ("hyperparameters", "inducing"):
        model = _model(strategy)
        if learn == "hyperparameters":
            model.covar_module.base_kernel.raw_lengthscale.requires_grad_(True)
        else:
            _base(model).inducing_points.requires_grad_(True)
        mll = gpytorch.mlls.VariationalELBO(_likelihood(1), model, num_data=len(y))
        loss = -mll(model(X), y)
        loss.backward()
        assert "_natvi_kept_prior" not in _base(model).__dict__
        learned = (model.covar_module.base_kernel.raw_lengthscale if learn == "hyperparameters"
                   else _base(model).inducing_points)
        assert learned.grad is not None and bool(learned.grad.abs().sum() > 0)


def test_frozen_hyperparameter_trajectory_is_gpytorch_ngds():
    """Natural steps with the prior kept follow GPyTorch's ``NGD`` (which recomputes every
    block each step) step for step."""
    X, y = _data()
    N = len(y)
    runs = []
    for natvi in (False, True):
        if natvi:
            q_u = NatviVariationalDistribution(M, dtype=DT)
            model = GPModel(X[:M].clone(), q_u, NatviVariationalStrategy).to(DT)
            opt = NaturalGradient(model.variational_parameters(), num_data=N, lr=0.3)
        else:
            q_u = NaturalVariationalDistribution(M)
            model = GPModel(X[:M].clone(), q_u, VariationalStrategy).to(DT)
            opt = gpytorch.optim.NGD(model.variational_parameters(), num_data=N, lr=0.3)
        with torch.no_grad():
            if natvi:
                q_u.q.set_meancov(torch.zeros(M, dtype=DT), torch.eye(M, dtype=DT))
            else:
                q_u.natural_vec.zero_()
                q_u.natural_mat.copy_(-0.5 * torch.eye(M, dtype=DT))
        _base(model).variational_params_initialized.fill_(1)
        mll = gpytorch.mlls.VariationalELBO(_likelihood(1), model, num_data=N)
        losses = []
        for _ in range(6):
            opt.zero_grad()
            loss = -mll(model(X), y)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        if natvi:
            assert "_natvi_kept_prior" in _base(model).__dict__
        q = _base(model).variational_distribution
        runs.append((torch.stack(losses), q.mean.detach(), q.covariance_matrix.detach()))
    assert float(runs[0][0][-1]) < float(runs[0][0][0]) - 0.05  # it learns
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
