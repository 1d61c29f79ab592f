"""One contract, every natvi optimiser (cases in ``tests/optim/contract_cases.py``)."""

from __future__ import annotations

import io

import pytest
import torch

from tests.optim.contract_cases import CASES

pytestmark = pytest.mark.parametrize("factory", [f for _, f in CASES], ids=[n for n, _ in CASES])


def _snapshot(case):
    return [p.detach().clone() for p in case.params]


def test_step_with_closure_returns_the_loss_before_the_step(factory):
    case = factory()
    before = _snapshot(case)
    expected = case.closure().detach()
    loss = case.optimizer.step(case.closure)
    assert torch.is_tensor(loss) and torch.equal(loss.detach(), expected)
    assert any(not torch.equal(a, p) for a, p in zip(before, case.params))


def test_step_without_closure_uses_existing_gradients_and_returns_none(factory):
    case = factory()
    case.closure()
    assert case.optimizer.step() is None


def test_zero_grad_clears_every_gradient(factory):
    case = factory()
    case.closure()
    case.optimizer.zero_grad()
    for group in case.optimizer.param_groups:
        for p in group["params"]:
            assert p.grad is None


def test_param_groups_hold_exactly_the_parameters_that_move(factory):
    case = factory()
    grouped = {id(p) for g in case.optimizer.param_groups for p in g["params"]}
    assert all("lr" in g for g in case.optimizer.param_groups)
    assert {id(p) for p in case.params} <= grouped
    case.optimizer.step(case.closure)


def test_state_dict_round_trip_continues_the_same_trajectory(factory):
    a = factory()
    for _ in range(3):
        a.optimizer.step(a.closure)
    buffer = io.BytesIO()
    torch.save(a.optimizer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    b = factory()
    with torch.no_grad():
        for pb, pa in zip(b.params, a.params):
            pb.copy_(pa)
    b.optimizer.load_state_dict(state)
    for _ in range(2):
        a.optimizer.step(a.closure)
        b.optimizer.step(b.closure)
    for pa, pb in zip(a.params, b.params):
        assert torch.equal(pa, pb)
    assert b.optimizer.state_dict()["param_groups"] == a.optimizer.state_dict()["param_groups"]


def test_load_state_dict_rejects_a_different_number_of_groups(factory):
    case = factory()
    state = case.optimizer.state_dict()
    state["param_groups"] = state["param_groups"] * 2
    with pytest.raises(ValueError):
        case.optimizer.load_state_dict(state)
