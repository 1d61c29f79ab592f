"""DSNGD and SNGD for MLR: the closed-form joint natural gradient against dense references,
linear per-step cost (by counting the elements every operation produces), convergence on a
well-specified synthetic model, and the optimiser contract."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from models.mlr import MLR, SyntheticMLR
from natvi.optim.dsngd import DSNGD, SNGD
from tests.expfam.families import dense_fisher

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(s=4, cards=(3, 2, 4), n=200, seed=0):
    truth = SyntheticMLR(s, cards, sigma=1.0, seed=seed)
    x, y = truth.sample(n, torch.Generator().manual_seed(seed + 1))
    model = MLR(s, cards)
    with torch.no_grad():
        model.beta.normal_(generator=torch.Generator().manual_seed(seed + 2))
        model.W.normal_(generator=torch.Generator().manual_seed(seed + 3))
    return truth, model, x, y


def _grads(model, x, y):
    model.zero_grad()
    model.loss(x, y).backward()
    return model.beta.grad.clone(), model.W.grad.clone()


def test_dsngd_direction_is_projected_joint_natural_gradient_at_the_count_estimate():
    truth, model, x, y = _setup()
    opt = DSNGD(model.parameters(), truth.n_classes, truth.cardinalities, pseudo_count=0.5)
    opt.observe(x, y)
    g_beta, g_W = _grads(model, x[:10], y[:10])
    d_beta, d_W = opt._direction(g_beta, g_W)

    # reference: L F(θ̂)⁻¹ Lᵀ g with F the autodiff Hessian of A at θ̂ = to_natural(μ̂)
    fam = opt.family
    mu_hat = opt.mean_estimate()
    theta_hat = fam.to_natural(mu_hat)
    F = dense_fisher(fam, theta_hat)
    lifted = fam.lift(g_beta, g_W)
    nat = torch.linalg.solve(F, torch.cat([lifted[0], lifted[1].reshape(-1)]))
    s = fam.n_classes
    want = fam.conditional((nat[: s - 1], nat[s - 1 :].reshape(s, fam.n_columns)))
    torch.testing.assert_close(d_beta, want[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(d_W, want[1], rtol=1e-10, atol=1e-10)

    dense = DSNGD(model.parameters(), truth.n_classes, truth.cardinalities, 0.1, 0, 0.5, "dense")
    dense.observe(x, y)
    for a, b in zip(dense._direction(g_beta, g_W), (d_beta, d_W)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_count_estimate_is_frequencies_with_max_entropy_pseudo_counts():
    truth, model, x, y = _setup(s=3, cards=(2, 3), n=50)
    opt = DSNGD(model.parameters(), 3, (2, 3), pseudo_count=2.0)
    opt.observe(x[:20], y[:20])
    opt.observe(x[20:], y[20:])
    p_y, p_yx = opt.mean_estimate()
    total = 50 + 3 * 2.0
    for k in range(2):
        assert float(p_y[k]) == pytest.approx((int((y == k).sum()) + 2.0) / total, abs=1e-14)
    # cell (class 2, feature 1 value 1) is column 1 + 1 = 2; pseudo mass 2 / r_1 = 2 / 3
    n = int(((y == 2) & (x[:, 1] == 1)).sum())
    assert float(p_yx[2, 2]) == pytest.approx((n + 2.0 / 3) / total, abs=1e-14)


class _ElementCounter(TorchDispatchMode):
    """Counts the elements every aten operation produces, and the largest single output."""

    def __init__(self):
        super().__init__()
        self.total, self.largest = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.total += t.numel()
                self.largest = max(self.largest, t.numel())
        return out


def _step_cost(s, cards, fisher):
    truth, model, x, y = _setup(s=s, cards=cards, n=30)
    opt = DSNGD(model.parameters(), s, cards, fisher=fisher)
    opt.observe(x, y)
    _grads(model, x, y)
    with _ElementCounter() as counter:
        opt.step()
    d = model.beta.numel() + model.W.numel()
    return counter, d


def test_dsngd_step_cost_is_linear_in_the_number_of_parameters():
    per_param = []
    for s, cards in [(3, (3, 2)), (6, (5, 4, 3)), (12, (8, 6, 5, 4, 7)), (24, (9,) * 12)]:
        counter, d = _step_cost(s, cards, "closed")
        assert counter.largest <= 2 * d  # no tensor beyond the joint's (s − 1) + s D entries
        per_param.append(counter.total / d)
    # elements produced per parameter stay bounded while d grows ~100×
    assert max(per_param) < 40 and per_param[-1] <= 1.5 * per_param[1]
    counter, d = _step_cost(12, (8, 6, 5, 4, 7), "dense")  # the dense reference is quadratic
    assert counter.largest >= d * d


def test_dsngd_converges_to_the_true_conditional():
    truth = SyntheticMLR(4, (3, 4), sigma=1.0, seed=3)
    x, y = truth.sample(4000, torch.Generator().manual_seed(4))
    model = MLR(4, (3, 4))
    opt = DSNGD(model.parameters(), 4, (3, 4), lr=1.0, decay=1.0)
    kl0 = truth.conditional_kl(model.beta, model.W)
    for i in range(0, 4000, 20):
        xb, yb = x[i : i + 20], y[i : i + 20]
        opt.zero_grad()
        model.loss(xb, yb).backward()
        opt.step()
        opt.observe(xb, yb)
    kl = truth.conditional_kl(model.beta, model.W)
    # ≈ (#params / 2) / N for an efficient estimator: 27 / 2 / 4000 ≈ 3e-3
    assert kl < 1e-2 < kl0


def test_sngd_direction_solves_with_the_averaged_conditional_fisher():
    truth, model, x, y = _setup(s=3, cards=(3, 2), n=40)
    opt = SNGD(model.parameters(), 3, (3, 2), damping=1e-2)
    opt.observe(x[:25])
    opt.observe(x[25:])
    g_beta, g_W = _grads(model, x, y)
    d_beta, d_W = opt._direction(g_beta, g_W)

    # reference: F = mean_x Σ_y p(y|x) ∇ log p(y|x) ∇ log p(y|x)ᵀ by autodiff
    params = torch.cat([model.beta.detach().unsqueeze(-1), model.W.detach()], -1).reshape(-1)

    def log_probs(v, xi):
        P = v.reshape(2, -1)
        m = MLR(3, (3, 2))
        phi = m.family.one_hot(xi.unsqueeze(0))
        logits = phi @ P[:, 1:].T + P[:, 0]
        return torch.log_softmax(torch.cat([logits, logits.new_zeros(1, 1)], -1), -1)[0]

    F = torch.zeros(params.numel(), params.numel(), dtype=DT)
    for xi in x:
        J = torch.autograd.functional.jacobian(lambda v, xi=xi: log_probs(v, xi), params)
        F += J.T @ (log_probs(params, xi).exp().unsqueeze(-1) * J)
    F = F / len(x) + 1e-2 * torch.eye(params.numel(), dtype=DT)
    g = torch.cat([g_beta.unsqueeze(-1), g_W], -1).reshape(-1)
    want = torch.linalg.solve(F, g).reshape(2, -1)
    torch.testing.assert_close(d_beta, want[:, 0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(d_W, want[:, 1:], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("cls", [DSNGD, SNGD])
def test_step_size_schedule_state_dict_and_closure(cls):
    truth, model, x, y = _setup(s=3, cards=(3, 2), n=20)
    opt = cls(model.parameters(), 3, (3, 2), lr=0.5, decay=2.0)
    opt.observe(x, y)
    closure = lambda: (opt.zero_grad(), model.loss(x, y).backward(), model.loss(x, y))[-1]
    before = [p.detach().clone() for p in model.parameters()]
    g = _grads(model, x, y)
    direction = opt._direction(*g)
    loss = opt.step(closure)
    assert torch.is_tensor(loss)
    for p, b, d in zip(model.parameters(), before, direction):
        torch.testing.assert_close(p.detach(), b - 0.5 * d)  # t = 0: a / (1 + b·0) = a
    opt2 = cls(model.parameters(), 3, (3, 2), lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0]["lr"] == 0.5 and opt2.state[model.beta]["step"] == 1
    if cls is DSNGD:
        torch.testing.assert_close(opt2.mean_estimate()[1], opt.mean_estimate()[1])


def test_bad_arguments_raise_value_errors():
    model = MLR(3, (3, 2))
    with pytest.raises(ValueError, match=r"beta \[2\] and W \[2, 4\]"):
        DSNGD(model.parameters(), 3, (3, 3))
    with pytest.raises(ValueError, match="lr"):
        DSNGD(model.parameters(), 3, (3, 2), lr=0.0)
    with pytest.raises(ValueError, match="pseudo_count"):
        DSNGD(model.parameters(), 3, (3, 2), pseudo_count=0.0)
    with pytest.raises(ValueError, match="damping"):
        SNGD(model.parameters(), 3, (3, 2), damping=0.0)
    opt = DSNGD(model.parameters(), 3, (3, 2))
    with pytest.raises(ValueError, match="class labels 0..2"):
        opt.observe(torch.tensor([[0, 1]]), torch.tensor([3]))
    with pytest.raises(ValueError, match="feature values"):
        opt.observe(torch.tensor([[3, 1]]), torch.tensor([0]))
