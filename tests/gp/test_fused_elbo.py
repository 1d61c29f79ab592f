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


def _node_by_node_elbo(model, X, y, num_data=None):
    """What ``VariationalGP.elbo`` computes when it does not fuse (its code after the check)."""
    f_mean, f_var, kl = model._qf_and_kl(X)
    ve = model.likelihood.variational_expectations(model._to_lik(f_mean), model._to_lik(f_var), y)
    return ve.sum() - kl if num_data is None else float(num_data) / X.shape[0] * ve.sum() - kl


def _elbo_grads(model, X, y, num_data=None, fused=True):
    model.zero_grad()
    elbo = (model.elbo if fused else lambda *a: _node_by_node_elbo(model, *a))(X, y, num_data)
    elbo.backward()
    return elbo, [p.grad.clone() for p in model.parameters() if p.grad is not None]


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
        b = _elbo_grads(plain, X, y, num_data, fused=False)
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


@pytest.mark.parametrize("mode", ["kept_whitened", "kept_unwhitened", "solved",
                                  "solved_unwhitened"])
def test_fused_elbo_gradcheck(mode):
    from natvi.gp.conditionals import cross_kernel_block
    from natvi.gp.fused import fused_elbo

    X, y = _data("bernoulli", n=20)
    model = _model("bernoulli", X, whiten=not mode.endswith("unwhitened"))
    with torch.no_grad():
        model.elbo(X, y)
        model.elbo(X, y)  # (the prior and the block kept)
    L_zz = model._chol_prior()
    A_t, kxx = model._solved_block(X, L_zz)
    t1, t2 = (p.detach().clone().requires_grad_(True) for p in model.q.parameters())
    lik = model.likelihood
    if mode.startswith("solved"):
        K_zx = cross_kernel_block(model.kernel, model.inducing_points, X)[0].detach().clone()
        inputs = (t1, t2, kxx.clone(), torch.full_like(kxx, 0.3), L_zz.clone(), K_zx)
        inputs = tuple(x.requires_grad_(True) for x in inputs)
        unwhitened = mode == "solved_unwhitened"
        assert torch.autograd.gradcheck(
            lambda a, b, k, mu, L, K: fused_elbo(a, b, k, mu, lik, y, 3.0, L_zz=L, K_zx=K,
                                                 whiten_L=L if unwhitened else None),
            inputs)
        return
    L = None if mode == "kept_whitened" else L_zz
    assert torch.autograd.gradcheck(
        lambda a, b: fused_elbo(a, b, kxx, None, lik, y, 3.0, A_t=A_t, whiten_L=L), (t1, t2))


def test_a_natural_fit_takes_the_fused_path_and_ends_where_the_plain_one_does():
    from natvi.optim import NaturalGradient

    X, y = _data("bernoulli")
    ends = []
    for fused in (True, False):
        model = _model("bernoulli", X, whiten=False)
        opt = NaturalGradient.for_model(model, lr=0.5)
        for _ in range(15):
            opt.zero_grad()
            elbo = model.elbo(X, y) if fused else _node_by_node_elbo(model, X, y)
            (-elbo).backward()
            opt.step()
        assert _is_fused(elbo) == fused
        ends.append([p.detach().clone() for p in model.q.parameters()])
    for a, b in zip(*ends):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", ["noise_learns", "mean_cholesky", "multi_latent",
                                  "batched_kernel"])
def test_the_fused_path_is_not_taken_where_it_does_not_apply(case):
    name = "gaussian"
    X, y = _data(name)
    kw = {"mean_cholesky": {"parameterization": MeanCholesky()}}.get(case, {})
    if case == "multi_latent":
        model = SVGP(gpytorch.kernels.RBFKernel().to(F64), Softmax(3), X[::5].clone(),
                     num_latent=3, learn_inducing=False)
        for p in model.hyperparameters():
            p.requires_grad_(False)
        y = (X[:, 0] > 0).to(F64) + (X[:, 1] > 0).to(F64)
    else:
        model = _model(name, X, **kw)
    if case == "batched_kernel":
        model.kernel = gpytorch.kernels.RBFKernel(batch_shape=torch.Size([1])).to(F64)
        model.kernel.raw_lengthscale.requires_grad_(False)
    if case == "noise_learns":
        model.likelihood.raw_noise.requires_grad_(True)
    for _ in range(2):
        elbo = model.elbo(X, y)
    assert not _is_fused(elbo)
    elbo.backward()
    if case == "noise_learns":
        learned = [p for p in model.hyperparameters() if p.requires_grad]
        assert learned and all(p.grad is not None and p.grad.abs().sum() > 0 for p in learned)


def test_the_first_call_keeps_the_prior_and_the_second_the_block():
    X, y = _data("bernoulli")
    model = _model("bernoulli", X)
    model._kept().clear()
    first = model.elbo(X, y)  # (solved in the node)
    assert _is_fused(first) and set(model._kept()) == {"prior"}
    second = model.elbo(X, y)  # (the kept block)
    assert _is_fused(second) and set(model._kept()) == {"prior", "block"}
    torch.testing.assert_close(first, second, rtol=1e-14, atol=0.0)
    model.kernel.outputscale = 0.9  # a changed prior: recomputed, kept again, still fused
    a = model.elbo(X, y)
    plain = _model("bernoulli", X, reuse=False)
    plain.kernel.outputscale = 0.9
    assert _is_fused(a)
    torch.testing.assert_close(a, plain.elbo(X, y), rtol=1e-13, atol=0.0)


def test_fused_natural_step_default_q_is_natural():
    X, _ = _data("bernoulli")
    assert type(_model("bernoulli", X).q.parameterization) is Natural


@pytest.mark.parametrize("name", ["bernoulli", "poisson"])
@pytest.mark.parametrize("learned", ["kernel", "inducing", "mean", "inputs", "nothing_kept"])
@pytest.mark.parametrize("whiten", [True, False])
def test_fused_elbo_with_a_prior_that_learns_equals_the_node_by_node_path(name, learned, whiten):
    X, y = _data(name)
    models = []
    for _ in range(2):
        m = _model(name, X, mean=True, whiten=whiten)
        if learned == "kernel":
            for p in m.kernel.parameters():
                p.requires_grad_(True)
        elif learned == "inducing":
            m.inducing_points = torch.nn.Parameter(m.inducing_points.clone())
        elif learned == "mean":
            m.mean.constant.requires_grad_(True)
        elif learned == "nothing_kept":
            m.reuse_fixed_prior = False
        models.append(m)
    for _ in range(2):  # (a fixed kernel: the second call reads the kept block)
        Xs = [X.clone().requires_grad_(learned == "inputs") for _ in models]
        a = _elbo_grads(models[0], Xs[0], y, 600)
        b = _elbo_grads(models[1], Xs[1], y, 600, fused=False)
    assert _is_fused(a[0]) and not _is_fused(b[0])
    assert ("block" in models[0]._kept()) == (learned == "mean")
    torch.testing.assert_close(a[0], b[0], rtol=1e-13, atol=0.0)
    assert len(a[1]) == len(b[1]) >= 2 + (learned not in ("nothing_kept", "inputs"))
    for ga, gb in zip(a[1], b[1]):
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)
    if learned == "inputs":
        torch.testing.assert_close(Xs[0].grad, Xs[1].grad, rtol=1e-10, atol=1e-12)
    nats = [natural_gradient(m.q.parameterization, list(m.q.parameters()),
                             [p.grad for p in m.q.parameters()]) for m in models]
    for x, z in zip(*nats):
        torch.testing.assert_close(x, z, rtol=1e-8, atol=1e-10)
