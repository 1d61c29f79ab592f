"""Curvature products against dense references built independently by autodiff (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev
from torch.nn import functional as F

from natvi.fisher import LOSSES, Curvature, loss_value, output_hessian_sqrt, output_hvp
from natvi.linalg import LowRankPlusDiag, Operator

B, D_IN, HIDDEN = 7, 3, 4


def _problem(loss: str, d_out: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, d_out)).double()
    X = torch.randn(B, D_IN, generator=g, dtype=torch.float64)
    if loss == "cross_entropy":
        y = torch.randint(0, d_out, (B,), generator=g)
    elif loss == "mse":
        y = torch.randn(B, d_out, generator=g, dtype=torch.float64)
    else:
        y = torch.randint(0, 2, (B, d_out), generator=g).double()
    return model, X, y


def _reference(model, X, y, loss):
    """``G = Jᵀ (∇²_f L) J`` with J by jacrev over the whole batch and the Hessian of the loss
    in the outputs by ``torch.func.hessian`` (no closed forms), plus ``L`` and ``∇L``."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(t):
        chunks = torch.split(t, [s.numel() for s in shapes])
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return functional_call(model, params, (X,))

    def total_loss(out):
        if loss == "cross_entropy":
            return nn.functional.cross_entropy(out, y)
        if loss == "mse":
            return 0.5 * ((out - y.reshape(out.shape)) ** 2).sum() / out.shape[0]
        return nn.functional.binary_cross_entropy_with_logits(
            out, y.reshape(out.shape), reduction="sum"
        ) / out.shape[0]

    out = f(theta)
    J = jacrev(f)(theta).reshape(out.numel(), -1)
    H = hessian(total_loss)(out.detach()).reshape(out.numel(), out.numel())
    grad = jacrev(lambda t: total_loss(f(t)))(theta)
    return J.T @ H @ J, total_loss(out), grad


@pytest.mark.parametrize("loss", LOSSES)
def test_matrix_free_ggn_equals_dense_autodiff_reference(loss):
    model, X, y = _problem(loss)
    G_ref, L_ref, g_ref = _reference(model, X, y, loss)
    curv = Curvature(model, X, y, loss)
    eye = torch.eye(curv.size, dtype=torch.float64)
    torch.testing.assert_close(curv.matmat(eye), G_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(curv.dense(), G_ref, atol=1e-10, rtol=0)
    U = curv.factor()
    assert U.shape == (curv.size, B * 3)
    torch.testing.assert_close(U @ U.T, G_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(curv.loss, L_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(curv.grad, g_ref, atol=1e-12, rtol=0)


def test_scalar_output_models_are_treated_as_one_output_column():
    model, X, y = _problem("mse", d_out=1)
    model = nn.Sequential(model, nn.Flatten(0))
    y = y.reshape(-1)
    G_ref, _, _ = _reference(model, X, y, "mse")
    curv = Curvature(model, X, y, "mse")
    torch.testing.assert_close(curv.dense(), G_ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("loss", LOSSES)
def test_empirical_fisher_is_mean_outer_product_of_per_example_gradients(loss):
    model, X, y = _problem(loss)
    rows = []
    for n in range(B):
        model.zero_grad()
        loss_value(model(X[n : n + 1]), y[n : n + 1], loss).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    Gn = torch.stack(rows)
    F_ref = Gn.T @ Gn / B
    curv = Curvature(model, X, y, loss, kind="empirical")
    torch.testing.assert_close(curv.dense(), F_ref, atol=1e-12, rtol=0)
    v = torch.randn(curv.size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(curv.matvec(v), F_ref @ v, atol=1e-12, rtol=0)
    assert curv.factor().shape == (curv.size, B)


@pytest.mark.parametrize("loss", LOSSES)
def test_output_hessian_square_root_and_product_match_autodiff_hessian(loss):
    g = torch.Generator().manual_seed(3)
    f = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (5,), generator=g) if loss == "cross_entropy" else f.clone().uniform_()
    H = torch.stack(
        [hessian(lambda r, t=y[n : n + 1]: loss_value(r[None], t, loss))(f[n]) for n in range(5)]
    )
    S = output_hessian_sqrt(f, loss)
    torch.testing.assert_close(S @ S.mT, H, atol=1e-12, rtol=0)
    V = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(output_hvp(f, V, loss), torch.einsum("nij,knj->kni", H, V))


def test_damped_systems_agree_with_each_other():
    model, X, y = _problem("cross_entropy")
    curv = Curvature(model, X, y)
    A = curv.damped_dense(0.1)
    op, lr = curv.operator(0.1), curv.low_rank(0.1)
    assert isinstance(op, Operator) and isinstance(lr, LowRankPlusDiag)
    torch.testing.assert_close(op.to_dense(), A, atol=1e-12, rtol=0)
    torch.testing.assert_close(lr.to_dense(), A, atol=1e-12, rtol=0)


def test_loss_at_other_parameters_leaves_the_model_unchanged():
    model, X, y = _problem("cross_entropy")
    before = [p.detach().clone() for p in model.parameters()]
    curv = Curvature(model, X, y)
    shifted = curv.theta + 0.1
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
        expected = loss_value(model(X), y, "cross_entropy")
        for p, b in zip(model.parameters(), before, strict=True):
            p.copy_(b)
    torch.testing.assert_close(curv.loss_at(shifted), expected)
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "hinge"}, "loss must be one of"),
        ({"kind": "hessian"}, "kind must be"),
        ({"targets": torch.zeros(B, 3)}, "class indices"),
        ({"targets": torch.zeros(B + 1, dtype=torch.int64)}, "batch size"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, match):
    model, X, y = _problem("cross_entropy")
    args = {"targets": y, **kwargs}
    with pytest.raises(ValueError, match=match):
        Curvature(model, X, **args)


def test_negative_damping_is_refused():
    model, X, y = _problem("cross_entropy")
    with pytest.raises(ValueError, match="damping"):
        Curvature(model, X, y).operator(-1.0)


def _poisson(f, y):
    return F.poisson_nll_loss(f, y, log_input=True)


def _bce(f, y):
    return F.binary_cross_entropy_with_logits(f, y)


@pytest.mark.parametrize("loss", [F.cross_entropy, F.mse_loss, _poisson, _bce],
                         ids=["cross_entropy", "mse_loss", "poisson_nll", "bce_mean"])
def test_ggn_of_any_batch_mean_loss_equals_the_dense_autodiff_reference(loss):
    """``Jᵀ ∇²_f L J`` with the Hessian of the loss callable over the whole batch's outputs
    (torch.func.hessian, no per-example split) against every form of the curvature."""
    model, X, _ = _problem("mse")
    g = torch.Generator().manual_seed(5)
    y = (torch.randint(0, 3, (B,), generator=g) if loss is F.cross_entropy
         else torch.rand(B, 3, generator=g, dtype=torch.float64))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(t):
        chunks = torch.split(t, [s.numel() for s in shapes])
        return functional_call(model, dict(zip(names, [c.view(s) for c, s in
                                                       zip(chunks, shapes)])), (X,))

    out = f(theta).detach()
    J = jacrev(f)(theta).reshape(out.numel(), -1)
    H = hessian(lambda o: loss(o, y))(out).reshape(out.numel(), out.numel())
    G_ref = J.T @ H @ J
    curv = Curvature(model, X, y, loss)
    eye = torch.eye(curv.size, dtype=torch.float64)
    torch.testing.assert_close(curv.matmat(eye), G_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(curv.dense(), G_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(curv.grad, jacrev(lambda t: loss(f(t), y))(theta),
                               atol=1e-12, rtol=0)


def test_loss_names_are_deprecated_but_still_work():
    model, X, y = _problem("cross_entropy")
    with pytest.warns(DeprecationWarning, match="pass a callable"):
        named = Curvature(model, X, y, "cross_entropy")
    torch.testing.assert_close(named.dense(), Curvature(model, X, y).dense(), atol=0, rtol=0)
