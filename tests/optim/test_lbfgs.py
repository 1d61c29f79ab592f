"""AlternatingLBFGS: known optima (quadratic, Rosenbrock), monotone steps, gradients left at the
point left, a failed line search restores the parameters bit for bit, resumable state."""

from __future__ import annotations

import copy

import pytest
import torch

from natvi.optim.lbfgs import AlternatingLBFGS

DT = torch.float64


def _quadratic(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))[0]
    A = Q @ torch.diag(torch.logspace(-1.5, 1.5, n, dtype=DT)) @ Q.T  # condition number 1e3
    b = torch.randn(n, generator=g, dtype=DT)
    return A, b


def _closure(x, f, calls=None):
    def closure():
        if calls is not None:
            calls.append(float(f(x)))
        x.grad = None
        loss = f(x)
        loss.backward()
        return loss.detach()

    return closure


def test_reaches_the_minimum_of_an_ill_conditioned_quadratic_monotonically():
    A, b = _quadratic()
    f = lambda x: 0.5 * x @ A @ x - b @ x  # noqa: E731
    x = torch.zeros(20, dtype=DT, requires_grad=True)
    opt = AlternatingLBFGS([x], history_size=20)
    losses = [float(f(x).detach())]
    closure = _closure(x, f)
    for _ in range(300):
        losses.append(opt.step(closure, loss=None))
    # a line search on loss values resolves x to about sqrt(eps |f| / λ_min) ≈ 5e-7 here
    torch.testing.assert_close(x.detach(), torch.linalg.solve(A, b), rtol=0, atol=1e-5)
    assert all(b <= a for a, b in zip(losses, losses[1:]))


def test_reaches_the_rosenbrock_minimum_reusing_the_last_evaluation():
    f = lambda x: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2  # noqa: E731
    x = torch.tensor([-1.2, 1.0], dtype=DT, requires_grad=True)
    opt = AlternatingLBFGS([x])
    closure = _closure(x, f)
    loss = closure()
    for _ in range(300):
        loss = opt.step(closure, loss=loss)  # .grad is left at the point left: no re-evaluation
        # the gradient in .grad is the gradient at the current point
        (g,) = torch.autograd.grad(f(x), x)
        assert torch.equal(x.grad, g)
        assert loss == float(f(x).detach())
    torch.testing.assert_close(x.detach(), torch.ones(2, dtype=DT), rtol=0, atol=1e-6)


def test_a_failed_line_search_restores_the_parameters_bit_for_bit_and_resets():
    A, b = _quadratic(5)
    x = torch.randn(5, dtype=DT, generator=torch.Generator().manual_seed(1)).requires_grad_()
    opt = AlternatingLBFGS([x], max_backtracks=3)
    good = _closure(x, lambda z: 0.5 * z @ A @ z - b @ z)
    for _ in range(3):
        opt.step(good)
    assert len(opt.state[x]["s"]) > 0
    x0 = x.detach().clone()
    moved = [x0]

    def cliff(z):  # finite at the start, +inf anywhere else
        return (0.5 * z @ A @ z - b @ z) + (0.0 if torch.equal(z.detach(), moved[0]) else float("inf"))

    loss = opt.step(_closure(x, cliff))
    assert torch.equal(x.detach(), x0) and opt.last_t == 0.0
    assert opt.state[x]["s"] == [] and opt.state[x]["first_step"] == pytest.approx(0.01)
    assert loss == float(cliff(x))
    (g,) = torch.autograd.grad(cliff(x), x)
    assert torch.equal(x.grad, g)


def test_state_dict_resumes_the_same_trajectory():
    f = lambda x: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2  # noqa: E731
    x = torch.tensor([-1.2, 1.0], dtype=DT, requires_grad=True)
    opt = AlternatingLBFGS([x])
    for _ in range(7):
        opt.step(_closure(x, f))
    state, x_saved = copy.deepcopy(opt.state_dict()), x.detach().clone()
    for _ in range(5):
        opt.step(_closure(x, f))
    y = x_saved.clone().requires_grad_()
    twin = AlternatingLBFGS([y])
    twin.load_state_dict(state)
    for _ in range(5):
        twin.step(_closure(y, f))
    assert torch.equal(x.detach(), y.detach())


@pytest.mark.parametrize("kwargs, match", [
    ({"history_size": 0}, "history_size"),
    ({"max_backtracks": -1}, "max_backtracks"),
    ({"first_step": 0.0}, "first_step"),
    ({"c1": 1.0}, "c1"),
])
def test_bad_settings_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AlternatingLBFGS([torch.zeros(2, requires_grad=True)], **kwargs)
    with pytest.raises(ValueError, match="closure"):
        AlternatingLBFGS([torch.zeros(2, requires_grad=True)]).step(None)


def test_no_line_search_below_the_resolution_of_the_loss():
    f = lambda x: 1e6 + ((x - 1) ** 2).sum()  # noqa: E731
    x = torch.full((3,), 1 + 1e-9, dtype=DT, requires_grad=True)  # decrease ~1e-18 << 1e6 eps
    opt = AlternatingLBFGS([x])
    calls = []
    loss = opt.step(_closure(x, f, calls))
    assert len(calls) == 2 and opt.last_t == 0.0  # the first evaluation and one at x
    assert torch.equal(x.detach(), torch.full((3,), 1 + 1e-9, dtype=DT)) and loss == float(f(x).detach())
