"""Safeguards: atomic steps (bit-identical restore), back-off events, the iBLR correction."""

from __future__ import annotations

import pytest
import torch

from natvi import natural_gradient
from natvi.optim import Backoff, NaturalGradient, Riemannian, SafeguardWarning, Strict
from natvi.optim.safeguards import is_valid, plain_update, riemannian_update
from natvi.parameterizations import DiagMeanLogScale, DiagNatural, MeanCholesky, Natural
from tests.optim.toy_models import BayesLinReg, regression_data


def _overconfident_model(p=None, factor=100.0):
    """q at precision ``factor × P*`` (P* the exact posterior precision), exact mean.

    The natural step is then ``P' = (1 − γ) P + γ P*``: not positive definite for γ ≥ 1.0102.
    """
    X, y = regression_data()
    model = BayesLinReg(3, p or Natural())
    m, S = model.exact_posterior(X, y)
    if model.q.parameterization.diagonal:  # the mean-field optimum has precision diag(P*)
        S = 1.0 / torch.linalg.inv(S).diagonal(dim1=-2, dim2=-1)
    model.q.set_meancov(m[0], S[0] / factor)
    return model, X, y


def _grad(model, X, y):
    for x in model.q.xi():
        x.grad = None
    (-model.elbo(X, y)).backward()


def _snapshot(model):
    return [x.detach().clone() for x in model.q.xi()]


def _identical(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_strict_restores_q_bit_identically_and_raises_on_an_invalid_step():
    model, X, y = _overconfident_model()
    opt = NaturalGradient.for_model(model, lr=3.0, safeguard="none")
    _grad(model, X, y)
    before = _snapshot(model)
    with pytest.raises(ValueError, match="invalid"):
        opt.step()
    assert _identical(before, model.q.xi())


def test_a_refused_strict_step_leaves_the_schedule_where_it_was():
    model, X, y = _overconfident_model()
    opt = NaturalGradient.for_model(model, lr=3.0, safeguard="none")
    _grad(model, X, y)
    with pytest.raises(ValueError, match="invalid"):
        opt.step()
    assert all(opt.state[p].get("step", 0) == 0 for p in model.q.xi())


def test_backoff_shrinks_lr_until_valid_and_records_the_event():
    model, X, y = _overconfident_model()
    opt = NaturalGradient.for_model(model, lr=3.0)
    _grad(model, X, y)
    with pytest.warns(SafeguardWarning, match="backoff"):
        opt.step()
    # (1 − γ)·100 + γ > 0 needs γ < 1.0101: 3 and 1.5 fail, 0.75 is the first valid
    assert opt.events == [
        {"step": 0, "group": 0, "kind": "backoff", "lr": 3.0, "lr_used": 0.75, "tries": 2}
    ]
    precision = torch.linalg.inv(model.q.meancov()[1])
    assert bool((torch.linalg.eigvalsh(precision) > 0).all())
    assert opt.state_dict()["events"] == opt.events


def test_backoff_that_runs_out_of_tries_skips_the_step_bit_identically():
    model, X, y = _overconfident_model()
    opt = NaturalGradient.for_model(model, lr=3.0, safeguard=Backoff(max_tries=1))
    _grad(model, X, y)
    before = _snapshot(model)
    with pytest.warns(SafeguardWarning, match="skipped"):
        opt.step()
    assert _identical(before, model.q.xi())
    assert opt.events[0]["kind"] == "skipped" and opt.events[0]["lr_used"] == 0.0
    assert opt.state[model.q.xi()[0]]["step"] == 1


def test_a_non_finite_loss_under_a_closure_is_undone_and_backed_off():
    X, y = regression_data()
    model = BayesLinReg(3, Natural())
    opt = NaturalGradient.for_model(model, lr=1.0)
    start = _snapshot(model)

    def closure():
        opt.zero_grad()
        loss = -model.elbo(X, y)
        moved = (model.q.theta1 - start[0]).norm()
        loss = loss + torch.where(moved > 1.0, torch.inf, 0.0)  # a cliff far from the start
        loss.backward()
        return loss

    with pytest.warns(SafeguardWarning, match="backoff"):
        opt.step(closure)
    assert 0.0 < opt.events[0]["lr_used"] < 1.0
    assert (model.q.theta1 - start[0]).norm() <= 1.0


def test_monotone_backoff_rejects_a_valid_step_that_increases_the_loss():
    # MeanCholesky at γ = 1 from the prior: the scale update overshoots (valid but far worse)
    X, y = regression_data()
    model = BayesLinReg(3, MeanCholesky())
    opt = NaturalGradient.for_model(model, lr=1.0)

    def closure():
        opt.zero_grad()
        loss = -model.elbo(X, y)
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(3)]
    assert losses[0] > losses[1] > losses[2]
    assert opt.events and opt.events[0]["kind"] == "backoff"


@pytest.mark.parametrize("p", [Natural(), DiagNatural()], ids=lambda p: type(p).__name__)
def test_riemannian_step_is_positive_definite_where_the_plain_step_breaks(p):
    model, X, y = _overconfident_model(p)
    opt = NaturalGradient.for_model(model, lr=3.0, safeguard="riemannian")
    _grad(model, X, y)
    xi = _snapshot(model)

    nat = natural_gradient(p, xi, [x.grad for x in model.q.xi()])
    assert not is_valid(p, plain_update(xi, nat, 3.0))
    opt.step()
    assert opt.events == []
    theta2 = model.q.xi()[1].detach()
    eig = -2.0 * theta2 if p.diagonal else torch.linalg.eigvalsh(-2.0 * theta2)
    assert bool((eig > 0).all())


def test_riemannian_update_matches_the_iblr_in_mean_and_precision():
    g = torch.Generator().manual_seed(3)
    M = 4
    A = torch.randn(M, M, generator=g, dtype=torch.float64)
    P = A @ A.mT + torch.eye(M, dtype=torch.float64)
    m = torch.randn(M, generator=g, dtype=torch.float64)
    # a loss in (m, S): L = ½ tr(H S) + ½ (m − b)ᵀ H (m − b), H indefinite (breaks PD-ness)
    B = torch.randn(M, M, generator=g, dtype=torch.float64)
    H = B + B.mT
    b = torch.randn(M, generator=g, dtype=torch.float64)
    p = Natural()
    theta = (P @ m, -0.5 * P)
    xi = [t.clone().requires_grad_() for t in theta]
    m_, S_ = p.to_meancov(*xi)
    loss = 0.5 * (H * S_).sum() + 0.5 * (m_ - b) @ H @ (m_ - b)
    grads = torch.autograd.grad(loss, xi)

    nat = natural_gradient(p, [t.detach() for t in xi], grads)
    lr = 2.0
    new1, new2 = riemannian_update(p, theta, nat, lr)
    G = H  # ∇_S L = ½ H, so G = 2 ∇_S L = H
    S = torch.linalg.inv(P)
    P_expected = P + lr * G + 0.5 * lr**2 * G @ S @ G
    grad_m = H @ (m - b)
    m_expected = m - lr * torch.linalg.solve(P_expected, grad_m)
    torch.testing.assert_close(-2.0 * new2, P_expected, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(torch.linalg.solve(-2.0 * new2, new1), m_expected)
    assert bool((torch.linalg.eigvalsh(-2.0 * new2) > 0).all())


def test_riemannian_and_plain_steps_differ_at_second_order_only():
    model, X, y = _overconfident_model(factor=3.0)
    _grad(model, X, y)

    xi = _snapshot(model)
    nat = natural_gradient(Natural(), xi, [x.grad for x in model.q.xi()])
    gaps = []
    for lr in (1e-2, 5e-3):
        r = riemannian_update(Natural(), xi, nat, lr)
        q = plain_update(xi, nat, lr)
        gaps.append(max(float((a - b).abs().max()) for a, b in zip(r, q)))
    assert gaps[0] / gaps[1] == pytest.approx(4.0, rel=1e-6)


def test_is_valid_rejects_non_finite_non_pd_and_underflowed_variance():
    p = Natural()
    theta1, theta2 = torch.zeros(2, dtype=torch.float64), -0.5 * torch.eye(2, dtype=torch.float64)
    assert is_valid(p, (theta1, theta2))
    assert not is_valid(p, (theta1, -theta2))
    assert not is_valid(p, (theta1 + torch.nan, theta2))
    d = DiagMeanLogScale()
    m = torch.ones(2, dtype=torch.float64)
    assert is_valid(d, (m, torch.zeros(2, dtype=torch.float64)))
    assert not is_valid(d, (m, torch.full((2,), -300.0, dtype=torch.float64)))


@pytest.mark.parametrize("kw", [{"factor": 1.0}, {"factor": 0.0}, {"max_tries": -1},
                                {"monotone": "sometimes"}])
def test_safeguard_validation(kw):
    with pytest.raises(ValueError):
        Backoff(**kw)


def test_strict_never_retries_and_riemannian_is_not_monotone_in_natural_coordinates():
    assert Strict(max_tries=5).max_tries == 0
    assert not Riemannian().is_monotone(Natural())
    assert Backoff().is_monotone(MeanCholesky()) and not Backoff().is_monotone(Natural())
