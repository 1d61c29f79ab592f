"""NaturalGradient: exactness on conjugate models, agreement with natvi.natural_gradient in
every parameterisation, convergence, param groups and input validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import natvi
from natvi.optim import NaturalGradient
from natvi.parameterizations import BUILTIN, MeanCholesky, Natural
from natvi.variational import GaussianVariational
from tests.gaussians import MeanPrecisionCholesky
from tests.optim.toy_models import (
    BayesLinReg,
    LogisticReg,
    classification_data,
    regression_data,
)

ALL_PARAMETERIZATIONS = [P() for P in BUILTIN] + [MeanPrecisionCholesky()]


def _closure(opt, model, X, y):
    def closure():
        opt.zero_grad()
        loss = -model.elbo(X, y)
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("start", ["prior", "random"])
def test_one_step_of_size_one_in_natural_coordinates_is_the_exact_posterior(start):
    X, y = regression_data(L=2)
    model = BayesLinReg(3, Natural(), num_outputs=2)
    if start == "random":
        g = torch.Generator().manual_seed(1)
        A = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
        model.q.set_meancov(torch.randn(2, 3, generator=g, dtype=torch.float64), A @ A.mT + 0.1)
    opt = NaturalGradient.for_model(model, lr=1.0)
    opt.zero_grad()
    (-model.elbo(X, y)).backward()
    opt.step()
    m, S = model.q.meancov()
    m_exact, S_exact = model.exact_posterior(X, y)
    torch.testing.assert_close(m, m_exact, rtol=0, atol=1e-10)
    torch.testing.assert_close(S, S_exact, rtol=0, atol=1e-12)
    assert opt.events == []


@pytest.mark.parametrize("p", ALL_PARAMETERIZATIONS, ids=lambda p: type(p).__name__)
def test_step_is_xi_minus_lr_times_the_natural_gradient(p):
    X, y = classification_data(N=50)
    model = LogisticReg(3, p)
    opt = NaturalGradient.for_model(model, lr=1e-3)
    opt.zero_grad()
    (-model.elbo(X, y)).backward()
    xi = [x.detach().clone() for x in model.q.xi()]
    nat = natvi.natural_gradient(p, xi, [x.grad for x in model.q.xi()])
    opt.step()
    for new, old, n in zip(model.q.xi(), xi, nat):
        torch.testing.assert_close(new.detach(), old - 1e-3 * n, rtol=0, atol=1e-14)


@pytest.mark.parametrize("p", [P() for P in BUILTIN], ids=lambda p: type(p).__name__)
def test_lr_one_with_closure_reaches_the_exact_optimum_in_every_parameterization(p):
    X, y = regression_data(L=2)
    model = BayesLinReg(3, p, num_outputs=2)
    opt = NaturalGradient.for_model(model, lr=1.0)
    closure = _closure(opt, model, X, y)
    for _ in range(40):
        opt.step(closure)
    m, S = model.q.meancov()
    m_exact, S_exact = model.exact_posterior(X, y)
    torch.testing.assert_close(m, m_exact, rtol=0, atol=1e-9)
    # the mean-field optimum of a Gaussian target keeps the mean; variances = 1 / diag(P)
    target = 1.0 / torch.linalg.inv(S_exact).diagonal(dim1=-2, dim2=-1) if p.diagonal else S_exact
    torch.testing.assert_close(S, target, rtol=1e-8, atol=1e-12)


def test_non_conjugate_natural_steps_converge_to_the_same_optimum_in_every_coordinate():
    X, y = classification_data()
    finals = {}
    for p in (Natural(), MeanCholesky(), BUILTIN[3]()):
        model = LogisticReg(3, p)
        opt = NaturalGradient.for_model(model, lr=1.0)
        closure = _closure(opt, model, X, y)
        for _ in range(25):
            opt.step(closure)
        finals[type(p).__name__] = model.q.meancov()
    ref_m, ref_S = finals.pop("Natural")
    for m, S in finals.values():
        torch.testing.assert_close(m, ref_m, rtol=0, atol=1e-6)
        torch.testing.assert_close(S, ref_S, rtol=0, atol=1e-6)


def test_param_groups_take_per_group_overrides_and_skip_groups_without_gradients():
    q1 = GaussianVariational(2, dtype=torch.float64)
    q2 = GaussianVariational(2, parameterization=MeanCholesky(), dtype=torch.float64)
    q3 = GaussianVariational(2, dtype=torch.float64)
    opt = NaturalGradient([q1, {"params": q2, "lr": 0.25}, q3], lr=0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.25, 0.5]
    target = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss = sum(((q.meancov()[0] - target) ** 2).sum() for q in (q1, q2))
    loss.backward()
    before = [x.detach().clone() for x in q3.xi()]
    opt.step()
    assert [r.lr for r in opt.last_records] == [0.5, 0.25]
    assert all(torch.equal(a, b) for a, b in zip(before, q3.xi()))
    assert opt.state_dict()["state"] and not opt.state[q3.xi()[0]]


def test_a_plain_list_of_tensors_is_one_group_with_the_default_parameterization():
    p = MeanCholesky()
    m, L = (x.requires_grad_() for x in p.from_prior(torch.zeros(3), torch.eye(3)))
    opt = NaturalGradient([m, L], lr=0.1, parameterization=p)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["parameterization"] is p


def test_for_model_finds_every_gaussian_variational():
    class TwoQ(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = GaussianVariational(2)
            self.inner = nn.ModuleList([GaussianVariational(3, (2,), MeanCholesky())])

    opt = NaturalGradient.for_model(TwoQ(), lr=0.1)
    assert [type(g["parameterization"]) for g in opt.param_groups] == [Natural, MeanCholesky]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: NaturalGradient.for_model(nn.Linear(2, 2)), "GaussianVariational"),
        (lambda: NaturalGradient([torch.zeros(2, requires_grad=True)]), "parameterization"),
        (
            lambda: NaturalGradient([torch.zeros(2, requires_grad=True)], parameterization=Natural()),
            "needs 2 tensors",
        ),
        (lambda: NaturalGradient(GaussianVariational(2), lr=-1.0), "lr"),
        (lambda: NaturalGradient(GaussianVariational(2), safeguard="magic"), "safeguard"),
        (
            lambda: NaturalGradient(GaussianVariational(2, parameterization=MeanCholesky()),
                                    safeguard="riemannian"),
            "natural coordinates",
        ),
        (lambda: NaturalGradient([]), "empty"),
        (lambda: NaturalGradient([3]), "type int"),
    ],
)
def test_bad_construction_raises_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_non_finite_gradients_raise_and_leave_q_untouched():
    q = GaussianVariational(2, dtype=torch.float64)
    opt = NaturalGradient(q)
    before = [x.detach().clone() for x in q.xi()]
    for x in q.xi():
        x.grad = torch.full_like(x, float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, q.xi()))
