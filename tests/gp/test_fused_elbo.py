"""The whole-ELBO node (:mod:`natvi.gp.fused`): taken exactly when only a natural q (whitened
or not) takes a gradient under a kept prior, and equal — value, gradients in θ and the
recorded ∇_η — to the node-by-node path it replaces and to autodiff."""

from __future__ import annotations

import gpytorch
import pytest
import torch

import natvi._moments as moments
from natvi.gp import SVGP
from natvi.likelihoods import Bernoulli, Gaussian, Poisson, Softmax
from natvi.natgrad import natural_gradient
from natvi.parameterizations import MeanCholesky, Natural

F64 = torch.float64


def _data(likelihood: str, n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 2, generator=g, dtype=F64)
    f = torch.sin(2 * X[:, 0]) + 0.5 * X[:, 1]
    if likelihood == "bernoulli":
        return X, (f + 0.3 * torch.randn(n, generator=g, dtype=F64) > 0).to(F64)
    if likelihood == "poisson":
        return X, torch.poisson(torch.exp(1.0 + f), generator=g)
    return X, f + 0.1 * torch.randn(n, generator=g, dtype=F64)


def _lik(name: str):
    if name == "bernoulli":
        return Bernoulli()
    if name == "logit":
        return Bernoulli(link="logit")
    if name == "poisson":
        return Poisson()
    lik = Gaussian(noise=0.05)
    lik.raw_noise.requires_grad_(False)
    return lik


def _model(name: str, X, reuse=True, mean=False, whiten=True, parameterization=None, seed=3):
    k = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=2)).to(F64)
    k.base_kernel.lengthscale, k.outputscale = 0.8, 1.5
    mean_module = None
    if mean:
        mean_module = gpytorch.means.ConstantMean().to(F64)
        mean_module.constant.data.fill_(0.4)
    model = SVGP(k, _lik(name), X[::5].clone(), whiten=whiten, learn_inducing=False,
                 mean=mean_module, parameterization=parameterization)
    for p in model.hyperparameters():
        p.requires_grad_(False)
    model.reuse_fixed_prior = reuse
    with torch.no_grad():  # a q away from the prior: θ1 ≠ 0, S ≠ I
        g = torch.Generator().manual_seed(seed)
        M = model.num_inducing
        B = 0.3 * torch.randn(M, M, generator=g, dtype=F64)
        mean_q = 0.5 * torch.randn(M, generator=g, dtype=F64)
        cov = B @ B.mT + 0.5 * torch.eye(M, dtype=F64)
        if not whiten:
            L = model._chol_prior()
            mean_q, cov = L @ mean_q, L @ cov @ L.mT
        model.q.set_meancov(mean_q, cov)
    return model


def _elbo_grads(model, X, y, num_data=None):
    model.zero_grad()
    elbo = model.elbo(X, y, num_data=num_data)
    elbo.backward()
    return elbo, [p.grad.clone() for p in model.q.parameters()]


def _is_fused(elbo) -> bool:
    return type(elbo.grad_fn).__name__ == "_FusedElboBackward"


@pytest.mark.parametrize("name", ["bernoulli", "logit", "poisson", "gaussian"])
@pytest.mark.parametrize("mean", [False, True])
@pytest.mark.parametrize("num_data", [None, 600])
@pytest.mark.parametrize("whiten", [True, False])
def test_fused_elbo_equals_the_node_by_node_path(name, mean, num_data, whiten):
    X, y = _data("gaussian" if name == "gaussian" else
                 "poisson" if name == "poisson" else "bernoulli")
    fused = _model(name, X, mean=mean, whiten=whiten)
    plain = _model(name, X, reuse=False, mean=mean, whiten=whiten)
    for _ in range(2):  # (the first call keeps the prior; the second is fused)
        a = _elbo_grads(fused, X, y, num_data)
        b = _elbo_grads(plain, X, y, num_data)
    assert _is_fused(a[0]) and not _is_fused(b[0])
    torch.testing.assert_close(a[0], b[0], rtol=1e-13, atol=0.0)
    for ga, gb in zip(a[1], b[1]):
        torch.testing.assert_close(ga, gb, rtol=1e-11, atol=1e-13)
    # and the natural gradients: recorded by both backward passes, and by autodiff
    nats = [natural_gradient(m.q.parameterization, list(m.q.parameters()), g)
            for m, g in ((fused, a[1]), (plain, b[1]))]
    moments._RECORDED.clear()
    nats.append(natural_gradient(fused.q.parameterization, list(fused.q.parameters()), a[1]))
    for other in nats[1:]:
        for x, z in zip(nats[0], other):
            torch.testing.assert_close(x, z, rtol=1e-8, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(fused.elbo(X, y, num_data=num_data), a[0].detach(),
                                   rtol=1e-14, atol=0.0)


@pytest.mark.parametrize("whiten", [True, False])
def test_fused_elbo_gradcheck_in_theta(whiten):
    from natvi.gp.fused import fused_elbo

    X, y = _data("bernoulli", n=20)
    model = _model("bernoulli", X, whiten=whiten)
    with torch.no_grad():
        model.elbo(X, y)  # keep the prior and the block
    L_zz = model._chol_prior()
    A_t, kxx = model._solved_block(X, L_zz)
    t1, t2 = (p.detach().clone().requires_grad_(True) for p in model.q.parameters())
    L = None if whiten else L_zz
    assert torch.autograd.gradcheck(
        lambda a, b: fused_elbo(a, b, A_t, kxx, None, model.likelihood, y, 3.0, L), (t1, t2))


def test_a_natural_fit_takes_the_fused_path_and_ends_where_the_plain_one_does():
    from natvi.optim import NaturalGradient

    X, y = _data("bernoulli")
    ends = []
    for reuse in (True, False):
        model = _model("bernoulli", X, reuse=reuse, whiten=False)
        opt = NaturalGradient.for_model(model, lr=0.5)
        for _ in range(15):
            opt.zero_grad()
            elbo = model.elbo(X, y)
            (-elbo).backward()
            opt.step()
        assert _is_fused(elbo) == reuse
        ends.append([p.detach().clone() for p in model.q.parameters()])
    for a, b in zip(*ends):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", ["kernel_learns", "noise_learns", "mean_learns",
                                  "mean_cholesky", "no_reuse", "multi_latent"])
def test_the_fused_path_is_not_taken_where_it_does_not_apply(case):
    name = "gaussian"
    X, y = _data(name)
    kw = {"mean_cholesky": {"parameterization": MeanCholesky()},
          "no_reuse": {"reuse": False}, "mean_learns": {"mean": True}}.get(case, {})
    if case == "multi_latent":
        model = SVGP(gpytorch.kernels.RBFKernel().to(F64), Softmax(3), X[::5].clone(),
                     num_latent=3, learn_inducing=False)
        for p in model.hyperparameters():
            p.requires_grad_(False)
        y = (X[:, 0] > 0).to(F64) + (X[:, 1] > 0).to(F64)
    else:
        model = _model(name, X, **kw)
    if case == "kernel_learns":
        model.kernel.raw_outputscale.requires_grad_(True)
    if case == "noise_learns":
        model.likelihood.raw_noise.requires_grad_(True)
    if case == "mean_learns":
        model.mean.constant.requires_grad_(True)
    for _ in range(2):
        elbo = model.elbo(X, y)
    assert not _is_fused(elbo)
    elbo.backward()
    if case in ("kernel_learns", "noise_learns", "mean_learns"):
        learned = [p for p in model.hyperparameters() if p.requires_grad]
        assert learned and all(p.grad is not None and p.grad.abs().sum() > 0 for p in learned)


def test_the_first_call_keeps_the_prior_and_later_calls_are_fused():
    X, y = _data("bernoulli")
    model = _model("bernoulli", X)
    model._kept().clear()
    assert not _is_fused(model.elbo(X, y))
    assert _is_fused(model.elbo(X, y))
    model.kernel.outputscale = 0.9  # a changed prior: recomputed, kept again, still fused
    a = model.elbo(X, y)
    plain = _model("bernoulli", X, reuse=False)
    plain.kernel.outputscale = 0.9
    assert _is_fused(a)
    torch.testing.assert_close(a, plain.elbo(X, y), rtol=1e-13, atol=0.0)


def test_fused_natural_step_default_q_is_natural():
    X, _ = _data("bernoulli")
    assert type(_model("bernoulli", X).q.parameterization) is Natural
