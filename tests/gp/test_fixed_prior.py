"""A fixed prior kept across calls (``VariationalGP.reuse_fixed_prior``): the kept factor and
solved block give bit for bit what recomputing gives, and any change — in place or not — to the
kernel, the inducing inputs, the inputs, the dtype, or a gradient that must flow, is seen."""

from __future__ import annotations

import gpytorch
import pytest
import torch

from natvi.gp import SVGP, VGP
from natvi.likelihoods import Bernoulli, Softmax

F64 = torch.float64


def _data(n=40, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=F64)
    y = (X[:, 0] + 0.3 * torch.randn(n, generator=g, dtype=F64) > 0).to(F64)
    return X, y


def _kernel(batch=(), frozen=True, base=None):
    b = torch.Size(batch)
    base = base if base is not None else gpytorch.kernels.RBFKernel(ard_num_dims=2, batch_shape=b)
    k = gpytorch.kernels.ScaleKernel(base, batch_shape=b).to(F64)
    k.base_kernel.lengthscale = 0.7
    k.outputscale = 1.3
    for p in k.parameters():
        p.requires_grad_(not frozen)
    return k


def _svgp(X, frozen=True, whiten=True, reuse=True, learn_inducing=False, **kw):
    torch.manual_seed(1)
    lik = kw.pop("likelihood", Bernoulli())
    model = SVGP(kw.pop("kernel", None) or _kernel(frozen=frozen), lik, X[::4].clone(),
                 whiten=whiten, learn_inducing=learn_inducing, **kw)
    model.reuse_fixed_prior = reuse
    with torch.no_grad():  # a q away from the prior, the same in every model built here
        g = torch.Generator().manual_seed(2)
        model.q.theta1.add_(0.3 * torch.randn(model.q.theta1.shape, generator=g, dtype=F64))
    return model


def _elbo_and_grads(model, X, y):
    model.zero_grad()
    elbo = model.elbo(X, y)
    elbo.backward()
    return elbo.detach(), [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def _assert_same(a, b):
    assert torch.equal(a[0], b[0])
    for ga, gb in zip(a[1], b[1]):
        assert (ga is None and gb is None) or torch.equal(ga, gb)


@pytest.mark.parametrize("whiten", [True, False])
def test_kept_prior_gives_bit_for_bit_what_recomputing_gives(whiten):
    X, y = _data()
    kept, fresh = _svgp(X, whiten=whiten), _svgp(X, whiten=whiten, reuse=False)
    for _ in range(3):  # the first call computes and keeps, the later ones reuse
        _assert_same(_elbo_and_grads(kept, X, y), _elbo_and_grads(fresh, X, y))
    assert set(kept._kept()) == {"prior", "block"}
    assert fresh._kept() == {}
    L = kept._chol_prior()
    assert kept._chol_prior() is L  # reused, not recomputed
    assert kept._solved_block(X, L)[0] is kept._solved_block(X, L)[0]


def test_in_place_changes_to_kernel_inputs_and_inducing_points_are_seen():
    X, y = _data()
    kept, fresh = _svgp(X), _svgp(X, reuse=False)
    _elbo_and_grads(kept, X, y)
    for change in (
        lambda m: setattr(m.kernel.base_kernel, "lengthscale", 0.4),  # GPyTorch copies in place
        lambda m: m.kernel.raw_outputscale.data.add_(0.2),  # no version bump through .data
        lambda m: m.inducing_points.add_(0.05),
    ):
        change(kept)
        change(fresh)
        _assert_same(_elbo_and_grads(kept, X, y), _elbo_and_grads(fresh, X, y))
    X2 = X.clone()
    _elbo_and_grads(kept, X2, y)
    X2.mul_(1.1)  # the inputs changed in place after they were kept
    _assert_same(_elbo_and_grads(kept, X2, y), _elbo_and_grads(fresh, X2, y))


def test_new_inputs_each_call_like_minibatches():
    X, y = _data(n=60)
    kept, fresh = _svgp(X), _svgp(X, reuse=False)
    for i in range(3):
        Xb, yb = X[20 * i:20 * (i + 1)], y[20 * i:20 * (i + 1)]
        _assert_same(_elbo_and_grads(kept, Xb, yb), _elbo_and_grads(fresh, Xb, yb))


def test_nothing_is_kept_when_a_gradient_flows_to_the_prior():
    X, y = _data()
    for kw in ({"frozen": False}, {"learn_inducing": True}):
        kept, fresh = _svgp(X, **kw), _svgp(X, reuse=False, **kw)
        for _ in range(2):
            a, b = _elbo_and_grads(kept, X, y), _elbo_and_grads(fresh, X, y)
            _assert_same(a, b)
            assert kept._kept() == {}
        hyper = [p.grad for p in kept.hyperparameters() if p.requires_grad]
        assert hyper and all(g is not None and g.abs().sum() > 0 for g in hyper)
    # a gradient with respect to the inputs: the block is not kept, the gradient is exact
    kept, fresh = _svgp(X), _svgp(X, reuse=False)
    grads = []
    for m in (kept, fresh):
        Xg = X.clone().requires_grad_(True)
        m.elbo(Xg, y).backward()
        grads.append(Xg.grad)
    assert "block" not in kept._kept()
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("learned", ["base_kernel.raw_lengthscale", "raw_outputscale"])
def test_a_gradient_to_either_kernel_parameter_alone_is_seen(learned):
    X, y = _data()
    models = []
    for reuse in (True, False):
        m = _svgp(X, reuse=reuse)
        m.kernel.get_parameter(learned).requires_grad_(True)
        models.append(m)
    kept, fresh = models
    for _ in range(2):
        a, b = _elbo_and_grads(kept, X, y), _elbo_and_grads(fresh, X, y)
        _assert_same(a, b)
        assert kept._kept() == {}
    grad = kept.kernel.get_parameter(learned).grad
    assert grad is not None and grad.abs().sum() > 0


def test_dtype_change_and_state_dict_load_are_seen():
    X, y = _data()
    kept, fresh = _svgp(X), _svgp(X, reuse=False)
    _elbo_and_grads(kept, X, y)
    assert not any("kept" in k for k in kept.state_dict())
    other = _svgp(X)
    other.kernel.base_kernel.lengthscale = 1.9
    kept.load_state_dict(other.state_dict())
    fresh.load_state_dict(other.state_dict())
    _assert_same(_elbo_and_grads(kept, X, y), _elbo_and_grads(fresh, X, y))
    kept.to(torch.float32)
    fresh.to(torch.float32)
    X32, y32 = X.float(), y.float()
    _assert_same(_elbo_and_grads(kept, X32, y32), _elbo_and_grads(fresh, X32, y32))


def test_batched_kernel_multi_latent_and_vgp():
    X, _ = _data()
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    kw = {"likelihood": Softmax(3, num_samples=8, seed=0), "num_latent": 3}
    kept = _svgp(X, kernel=_kernel(batch=(3,)), **kw)
    fresh = _svgp(X, kernel=_kernel(batch=(3,)), reuse=False, **kw)
    for _ in range(2):
        _assert_same(_elbo_and_grads(kept, X, y), _elbo_and_grads(fresh, X, y))
    yb = (X[:, 0] > 0).to(F64)
    vgps = []
    for reuse in (True, False):
        model = VGP(X, _kernel(), Bernoulli())
        model.reuse_fixed_prior = reuse
        vgps.append(model)
    for _ in range(2):
        _assert_same(_elbo_and_grads(vgps[0], X, yb), _elbo_and_grads(vgps[1], X, yb))
    assert "prior" in vgps[0]._kept()


def test_kernels_natvi_does_not_evaluate_itself_are_never_kept():
    X, y = _data()
    periodic = gpytorch.kernels.ScaleKernel(gpytorch.kernels.PeriodicKernel()).to(F64)
    for p in periodic.parameters():
        p.requires_grad_(False)
    model = _svgp(X, kernel=periodic)
    model.elbo(X, y)
    assert model._kept() == {}
