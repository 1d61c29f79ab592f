"""MirrorDescent: the natural-gradient step in θ equals mirror descent with the log-partition's
Bregman divergence (argmin solved independently), Newton-speed maximum likelihood, atomic steps."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch

from natvi.expfam import Categorical, Gamma, Poisson
from natvi.optim.mirror import MirrorDescent

DT = torch.float64


def _bregman(fam, a, b):
    """``D_A(a, b) = A(a) − A(b) − ⟨∇A(b), a − b⟩`` from the log-partition alone (autodiff)."""
    if not b.requires_grad:
        b = b.detach().requires_grad_(True)
    Ab = fam.log_partition(b).sum()
    (grad_b,) = torch.autograd.grad(Ab, b, create_graph=True)
    return fam.log_partition(a).sum() - Ab - (grad_b * (a - b)).sum()


def _mirror_argmin(fam, theta_t, g_mu, gamma):
    """``argmin_θ ⟨g_μ, ∇A(θ)⟩ + D_A(θ_t, θ) / γ`` by BFGS over θ, started at θ_t."""

    def objective(x):
        theta = torch.tensor(x, dtype=DT, requires_grad=True)
        A = fam.log_partition(theta)
        (mu,) = torch.autograd.grad(A.sum(), theta, create_graph=True)
        val = (g_mu * mu).sum() + _bregman(fam, theta_t, theta) / gamma
        (grad,) = torch.autograd.grad(val, theta)
        return float(val.detach()), grad.numpy()

    res = scipy.optimize.minimize(
        objective, theta_t.numpy(), jac=True, method="BFGS", options=dict(gtol=1e-13)
    )
    return torch.tensor(res.x, dtype=DT)


@pytest.mark.parametrize("fam, dim", [(Categorical(), 3), (Poisson(), 2)])
def test_natural_gradient_step_equals_mirror_descent_with_bregman_of_log_partition(fam, dim):
    gen = torch.Generator().manual_seed(0)
    theta_t = 0.5 * torch.randn(dim, generator=gen, dtype=DT)
    mu_star = fam.to_mean(torch.randn(dim, generator=gen, dtype=DT))
    W = torch.diag(torch.rand(dim, generator=gen, dtype=DT) + 0.5)
    loss_of_mu = lambda mu: 0.5 * (mu - mu_star) @ W @ (mu - mu_star)
    gamma = 0.3

    # the optimiser sees only L(θ) = ℓ(μ(θ)) and ∇_θ L
    theta = torch.nn.Parameter(theta_t.clone())
    opt = MirrorDescent([theta], family=fam, lr=gamma)
    opt.zero_grad()
    loss_of_mu(fam.to_mean(theta)).backward()
    opt.step()

    # the mirror step, from ∇_μ ℓ at μ_t (no inverse Fisher, no inverse mean map)
    g_mu = W @ (fam.to_mean(theta_t) - mu_star)
    want = _mirror_argmin(fam, theta_t, g_mu, gamma)
    torch.testing.assert_close(theta.detach(), want, rtol=1e-7, atol=1e-7)
    # and the update is linear in θ: θ_t − γ ∇_μ ℓ
    torch.testing.assert_close(theta.detach(), theta_t - gamma * g_mu, rtol=1e-12, atol=1e-12)


def test_mirror_descent_over_theta_with_bregman_is_linear_in_mean():
    """The other mirror step (over θ, ``D_A(θ, θ_t)``) moves μ, not θ, by ``−γ ∇_θ L``."""
    fam = Categorical()
    gen = torch.Generator().manual_seed(1)
    theta_t = torch.randn(3, generator=gen, dtype=DT)
    g_theta = 0.1 * torch.randn(3, generator=gen, dtype=DT)
    gamma = 0.5

    def objective(x):
        theta = torch.tensor(x, dtype=DT, requires_grad=True)
        val = (g_theta * theta).sum() + _bregman(fam, theta, theta_t.clone()) / gamma
        (grad,) = torch.autograd.grad(val, theta)
        return float(val.detach()), grad.numpy()

    x = scipy.optimize.minimize(
        objective, theta_t.numpy(), jac=True, method="BFGS", options=dict(gtol=1e-13)
    ).x
    mu_new = fam.to_mean(torch.tensor(x, dtype=DT))
    torch.testing.assert_close(mu_new, fam.to_mean(theta_t) - gamma * g_theta, rtol=1e-7, atol=1e-8)


def test_unit_step_on_gamma_likelihood_is_newton_and_reaches_the_mle():
    fam = Gamma()
    x = torch.tensor(np.random.default_rng(0).gamma(3.0, 0.5, 500), dtype=DT)
    T1, T2 = x.log().mean(), x.mean()
    theta = [
        torch.nn.Parameter(t)
        for t in fam.from_shape_rate(torch.tensor(1.0, dtype=DT), torch.tensor(1.0, dtype=DT))
    ]
    opt = MirrorDescent(theta, family=fam, lr=1.0)

    def closure():
        opt.zero_grad()
        nll = fam.log_partition(tuple(theta)) - theta[0] * T1 - theta[1] * T2
        nll.backward()
        return nll

    for _ in range(12):
        opt.step(closure)
    mle = fam.to_natural((T1, T2))  # the MLE matches the sufficient statistics' means
    for p, m in zip(theta, mle):
        torch.testing.assert_close(p.detach(), m, rtol=1e-10, atol=1e-10)


def test_step_that_leaves_domain_is_backed_off_and_never_applied_invalid():
    fam = Gamma()
    theta = [
        torch.nn.Parameter(torch.tensor(0.0, dtype=DT)),
        torch.nn.Parameter(torch.tensor(-1.0, dtype=DT)),
    ]
    opt = MirrorDescent(theta, family=fam, lr=100.0)
    theta[0].grad, theta[1].grad = torch.tensor(1.0, dtype=DT), torch.tensor(-1.0, dtype=DT)
    opt.step()
    assert float(theta[0].detach()) > -1 and float(theta[1].detach()) < 0
    assert opt.state[theta[0]]["step"] == 1

    with pytest.raises(ValueError, match="leaves the Gamma family's domain"):
        bad = MirrorDescent(theta, family=fam, lr=1e6, max_backoff=0)
        theta[0].grad, theta[1].grad = torch.tensor(1.0, dtype=DT), torch.tensor(-1.0, dtype=DT)
        before = [p.detach().clone() for p in theta]
        bad.step()
    for p, b in zip(theta, before):
        assert torch.equal(p.detach(), b)


def test_param_groups_state_dict_round_trip_and_bad_arguments():
    p = torch.nn.Parameter(torch.zeros(2, dtype=DT))
    q = torch.nn.Parameter(torch.zeros(3, dtype=DT))
    opt = MirrorDescent(
        [{"params": [p], "family": Poisson()}, {"params": [q], "lr": 0.1}],
        family=Categorical(),
        lr=lambda t: 1.0 / (1 + t),
    )
    p.grad, q.grad = torch.ones(2, dtype=DT), torch.ones(3, dtype=DT)
    opt.step()
    sd = opt.state_dict()
    opt2 = MirrorDescent(
        [{"params": [p], "family": Poisson()}, {"params": [q]}], family=Categorical()
    )
    opt2.load_state_dict(sd)
    assert opt2.param_groups[1]["lr"] == 0.1 and opt2.state[p]["step"] == 1
    torch.testing.assert_close(p.detach(), -torch.ones(2, dtype=DT))  # θ − 1·g/λ at λ = 1
    with pytest.raises(ValueError, match="family"):
        MirrorDescent([p], lr=1.0)
    with pytest.raises(ValueError, match="lr must be"):
        MirrorDescent([p], family=Poisson(), lr=-1.0)
