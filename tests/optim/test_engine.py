"""The atomic-step engine: accept or restore bit-identically (parameters and gradients), one
record per block and step, and what the optimisers built on it report."""

from __future__ import annotations

import warnings

import pytest
import torch

from natvi._history import History
from natvi.expfam import Gamma
from natvi.optim import Backoff, MirrorDescent, NaturalGradient, SafeguardWarning
from natvi.optim.engine import Block, StepRecord, atomic_step
from natvi.parameterizations import MeanCholesky, Natural
from natvi.variational import GaussianVariational
from tests.optim.toy_models import BayesLinReg, regression_data

DT = torch.float64


def _torch_closure(model, X, y, cliff=None):
    """A standard torch closure over the whole model (q and the noise hyperparameter)."""
    start = model.q.xi()[0].detach().clone()

    def closure():
        model.zero_grad()
        loss = -model.elbo(X, y)
        if cliff is not None:  # an infinite loss once q's first coordinate moves by > cliff
            loss = loss + torch.where((model.q.xi()[0] - start).norm() > cliff, torch.inf, 0.0)
        loss.backward()
        return loss

    return closure


def _fresh_hyper_grad(model, X, y):
    """∇ of the loss w.r.t. the noise at the current point, by a separate forward/backward."""
    (g,) = torch.autograd.grad(-model.elbo(X, y), [model.log_noise])
    return g


@pytest.mark.parametrize(
    "parameterization, lr, cliff, reason",
    [(Natural(), 1.0, 1e-3, "nonfinite_loss"), (MeanCholesky(), 50.0, None, "loss_increase")],
    ids=["nonfinite", "loss-increase"],
)
def test_gradients_after_a_skipped_step_are_those_of_the_restored_point(
    parameterization, lr, cliff, reason
):
    X, y = regression_data()
    model = BayesLinReg(3, parameterization)
    opt = NaturalGradient.for_model(model, lr=lr, safeguard=Backoff(max_tries=2))
    start = [x.detach().clone() for x in model.q.xi()]
    with pytest.warns(SafeguardWarning, match="skipped"):
        opt.step(_torch_closure(model, X, y, cliff))
    assert all(torch.equal(a, b) for a, b in zip(start, model.q.xi()))
    assert opt.last_records[0].kind == "skipped" and opt.last_records[0].reason == reason
    # the hyperparameter optimiser stepping next must see the gradient at q's actual value
    torch.testing.assert_close(model.log_noise.grad, _fresh_hyper_grad(model, X, y), rtol=1e-12,
                               atol=0)


def test_gradients_after_a_backed_off_step_are_those_of_the_accepted_point():
    X, y = regression_data()
    model = BayesLinReg(3, MeanCholesky())
    opt = NaturalGradient.for_model(model, lr=50.0)
    with pytest.warns(SafeguardWarning, match="backoff"):
        opt.step(_torch_closure(model, X, y))
    assert 0.0 < opt.last_records[0].lr_used < 50.0
    torch.testing.assert_close(model.log_noise.grad, _fresh_hyper_grad(model, X, y), rtol=1e-12,
                               atol=0)


def test_a_step_that_exhausts_its_retries_is_recorded_once():
    X, y = regression_data()
    model = BayesLinReg(3, Natural())
    opt = NaturalGradient.for_model(model, lr=1.0, safeguard=Backoff(max_tries=2))
    with pytest.warns(SafeguardWarning):
        opt.step(_torch_closure(model, X, y, cliff=1e-3))
    assert opt.step_records == [StepRecord(0, 0, 1.0, 0.0, 3, "nonfinite_loss")]
    assert [e["kind"] for e in opt.events] == ["skipped"]
    history = History()
    history.append_step(iteration=0, elbo=0.0, time=0.0, records=opt.last_records)
    assert history.rows()[0]["events"] == 1 and history.lr == [1.0]


def test_engine_restores_parameters_and_gradients_bit_identically():
    x = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=DT))
    x.grad = torch.tensor([0.25, -0.5], dtype=DT)
    before, grad = x.detach().clone(), x.grad.clone()

    def closure():  # a closure that overwrites .grad at the rejected point
        x.grad = torch.full_like(x, 7.0)
        return torch.tensor(float("nan"))

    block = Block([x], lambda g: (x.detach() - g,), lambda c: True, lr=1.0)
    (record,), after = atomic_step([block], closure=closure, max_tries=3)
    assert record == StepRecord(0, 0, 1.0, 0.0, 4, "nonfinite_loss") and after is None
    assert torch.equal(x.detach(), before) and torch.equal(x.grad, grad)


def test_engine_backs_off_on_the_declared_domain_and_counts_tries():
    x = torch.nn.Parameter(torch.tensor([1.0], dtype=DT))
    block = Block([x], lambda g: (x.detach() - g,), lambda c: bool((c[0] > 0).all()), lr=4.0)
    (record,), _ = atomic_step([block])
    assert record.kind == "backoff" and record.reason == "invalid"
    assert (record.lr_used, record.tries) == (0.5, 3)
    assert float(x.detach()) == 0.5


def test_step_records_are_one_per_group_and_step_and_round_trip_the_state_dict():
    X, y = regression_data()
    model = BayesLinReg(3, Natural())
    opt = NaturalGradient.for_model(model, lr=0.5)
    for _ in range(3):
        opt.step(_torch_closure(model, X, y))
    assert [(r.step, r.kind) for r in opt.step_records] == [(0, "ok"), (1, "ok"), (2, "ok")]
    assert opt.events == []
    other = NaturalGradient.for_model(BayesLinReg(3, Natural()), lr=0.5)
    other.load_state_dict(opt.state_dict())
    assert other.step_records == opt.step_records


def test_last_lr_still_works_with_a_deprecation_warning():
    X, y = regression_data()
    model = BayesLinReg(3, Natural())
    opt = NaturalGradient.for_model(model, lr=0.5)
    opt.step(_torch_closure(model, X, y))
    with pytest.warns(DeprecationWarning, match="last_records"):
        assert opt.last_lr == [0.5]


def test_mirror_descent_records_its_steps_in_the_same_shape():
    fam = Gamma()
    theta = [torch.nn.Parameter(torch.tensor(v, dtype=DT)) for v in (0.0, -1.0)]
    opt = MirrorDescent(theta, family=fam, lr=100.0)
    theta[0].grad, theta[1].grad = torch.tensor(1.0, dtype=DT), torch.tensor(-1.0, dtype=DT)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        opt.step()
    (record,) = opt.step_records
    assert record.kind == "backoff" and record.reason == "invalid" and record.lr == 100.0


def test_num_data_on_a_per_datum_loss_takes_the_step_of_the_total_loss():
    X, y = regression_data()
    N = X.shape[0]
    finals = []
    for num_data, scale in ((None, 1.0), (N, 1.0 / N)):
        model = BayesLinReg(3, MeanCholesky())
        opt = NaturalGradient.for_model(model, lr=0.3, num_data=num_data)
        for _ in range(3):
            opt.zero_grad()
            (-model.elbo(X, y) * scale).backward()
            opt.step()
        finals.append([x.detach().clone() for x in model.q.xi()])
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="num_data"):
        NaturalGradient.for_model(BayesLinReg(3), num_data=0)


def test_the_engine_rejects_non_finite_candidates_unless_the_block_checks_them_itself():
    x = torch.zeros(3, dtype=DT)

    def block(checks_finite):
        def propose(lr):  # non-finite until γ is small enough
            return (torch.full((3,), torch.inf if lr > 0.3 else lr, dtype=DT),)

        return Block([x], propose, lambda c: True, 1.0, checks_finite=checks_finite)

    (record,), _ = atomic_step([block(False)])
    assert (record.lr_used, record.tries, record.reason) == (0.25, 2, "invalid")
    assert torch.equal(x, torch.full((3,), 0.25, dtype=DT))
    (record,), _ = atomic_step([block(True)])  # valid accepts anything: so does the engine
    assert record.lr_used == 1.0 and bool(torch.isinf(x).all())


def test_natural_gradient_leaves_the_finiteness_check_to_in_domain_only_when_it_makes_it():
    class Narrow(Natural):
        def in_domain(self, *xi):  # an override that does not check finiteness itself
            return True

    for p, expected in ((Natural(), True), (Narrow(), False)):
        q = GaussianVariational(2, parameterization=p, dtype=DT)
        opt = NaturalGradient(q)
        for t in q.xi():
            t.grad = torch.zeros_like(t)
        assert opt._block(0, opt.param_groups[0]).checks_finite is expected
