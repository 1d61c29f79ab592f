"""FisherPreconditioner writes the natural gradient into .grad: stock SGD is NGD, stock Adam with
betas=(0, 0) is TNGD-Adam; NGD's closure step equals its deprecated batch step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from natvi.linalg import CG, Cholesky
from natvi.optim import NGD, FisherPreconditioner
from tests.optim.test_ngd import LAM, _exact
from tests.test_fisher import _problem


def _backward(model, X, y):
    model.zero_grad()
    F.cross_entropy(model(X), y).backward()


def test_preconditioned_sgd_takes_the_exact_natural_gradient_step():
    model, X, y = _problem("cross_entropy")
    expected, _ = _exact(model, X, y)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    pre = FisherPreconditioner(model, F.cross_entropy, damping=LAM, solver=Cholesky())
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    _backward(model, X, y)
    diagnostics = pre.apply(X, y)
    sgd.step()
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(after, theta - 0.1 * expected, atol=1e-10, rtol=0)
    assert diagnostics["residual"] < 1e-10 and diagnostics["solve_seconds"] > 0


def test_preconditioned_adam_with_zero_betas_is_adam_fed_the_natural_gradient():
    model, X, y = _problem("cross_entropy")
    reference = copy.deepcopy(model)
    expected, _ = _exact(model, X, y)
    pre = FisherPreconditioner(model, damping=LAM, solver=CG(tol=1e-13))
    adam = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.0, 0.0))
    _backward(model, X, y)
    pre.apply(X, y)
    adam.step()
    ref_adam = torch.optim.Adam(reference.parameters(), lr=0.01, betas=(0.0, 0.0))
    sizes = [p.numel() for p in reference.parameters()]
    for p, chunk in zip(reference.parameters(), torch.split(expected, sizes), strict=True):
        p.grad = chunk.view_as(p).clone()
    ref_adam.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-10, rtol=0)


def test_apply_without_gradients_says_to_call_backward():
    model, X, y = _problem("cross_entropy")
    with pytest.raises(ValueError, match=r"loss.backward\(\) before apply"):
        FisherPreconditioner(model).apply(X, y)


def test_closure_step_follows_the_deprecated_batch_step():
    model, X, y = _problem("cross_entropy")
    old_model = copy.deepcopy(model)
    opt = NGD(model, F.cross_entropy, lr=0.3, damping=LAM, solver=CG(tol=1e-13))
    with pytest.warns(DeprecationWarning, match="'cross_entropy' is deprecated"):
        old = NGD(old_model, "cross_entropy", lr=0.3, damping=LAM, solver=CG(tol=1e-13))

    def closure():
        _backward(model, X, y)
        return F.cross_entropy(model(X), y)

    for _ in range(3):
        opt.observe(X, y)
        loss = opt.step(closure)
        with pytest.warns(DeprecationWarning, match=r"opt.observe\(inputs, targets\)"):
            old_loss = old.step(X, y)
        torch.testing.assert_close(loss.detach(), old_loss, atol=1e-12, rtol=0)
    for p, q in zip(model.parameters(), old_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-10, rtol=0)


def test_a_step_before_observe_says_what_to_do_and_adam_true_is_deprecated():
    model, X, y = _problem("cross_entropy")
    opt = NGD(model)
    _backward(model, X, y)
    with pytest.raises(ValueError, match=r"call opt.observe\(inputs, targets\)"):
        opt.step()
    with pytest.warns(DeprecationWarning, match="betas=\\(0, 0\\)"):
        NGD(model, adam=True)
