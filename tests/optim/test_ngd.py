"""NGD / TNGD: every solver gives the same natural gradient; the OU limits (t → ∞: NGD,
t → 0 from the gradient: SGD); TNGD-Adam; Levenberg–Marquardt damping; delay; state."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from natvi.fisher import loss_value
from natvi.linalg import CG, OU, Cholesky, Woodbury
from natvi.optim.ngd import NGD
from tests.test_fisher import _problem, _reference

LAM = 0.5


def _natgrad(opt: NGD) -> torch.Tensor:
    return torch.cat([opt.state[p]["natgrad"].reshape(-1) for p in opt.param_groups[0]["params"]])


def _exact(model, X, y, lam=LAM):
    """``(G + λI)⁻¹ g`` and ``A`` from the independent autodiff reference."""
    G, _, g = _reference(model, X, y, "cross_entropy")
    A = G + lam * torch.eye(G.shape[0], dtype=G.dtype)
    return torch.linalg.solve(A, g), A


def _one_step(solver, lam=LAM, **kw):
    model, X, y = _problem("cross_entropy")
    opt = NGD(model, "cross_entropy", lr=0.1, damping=lam, solver=solver, **kw)
    opt.step(X, y)
    return _natgrad(opt), opt


@pytest.mark.parametrize(
    ("solver", "form"),
    [
        (Cholesky(), "auto"),
        (Cholesky(), "dense"),
        (CG(tol=1e-13), "auto"),
        (CG(tol=1e-13), "low_rank"),
        (Woodbury(), "auto"),
    ],
)
def test_every_digital_solver_returns_the_exact_natural_gradient(solver, form):
    model, X, y = _problem("cross_entropy")
    expected, _ = _exact(model, X, y)
    got, opt = _one_step(solver, form=form)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    after = torch.cat([p.detach().reshape(-1) for p in opt.model.parameters()])
    torch.testing.assert_close(after, theta - 0.1 * expected, atol=1e-10, rtol=0)


def test_ou_natural_gradient_is_within_its_statistical_tolerance_and_longer_time_is_closer():
    model, X, y = _problem("cross_entropy")
    expected, A = _exact(model, X, y)
    kappa = 1e-3
    A_inv = torch.linalg.inv(A)
    errors = {}
    for t in (4.0, 400.0):
        dt = 0.5
        ou = OU(dt=dt, num_samples=int(t / dt), noise=kappa, method="exact", seed=0)
        got, _ = _one_step(ou, warm_start="zero")
        err = float(torch.linalg.vector_norm(got - expected))
        # time average of a stationary OU over t: Var ≈ 2 κ0 A⁻² / t; bias e^{-At}(0 − x*)/(A t)
        sd = math.sqrt(2 * kappa * float((A_inv @ A_inv).trace()) / t)
        lam_min = float(torch.linalg.eigvalsh(A).min())
        bias = float(torch.linalg.vector_norm(expected)) / (lam_min * t)
        assert err <= 4 * sd + bias, (t, err, sd, bias)
        errors[t] = err
    assert errors[400.0] < 0.2 * errors[4.0]


def test_tngd_with_long_analog_time_equals_exact_ngd():
    model, X, y = _problem("cross_entropy")
    expected, _ = _exact(model, X, y)
    ou = OU(dt=1.0, num_samples=1, burnin=200, noise=0.0, method="exact")
    got, opt = _one_step(ou, warm_start="zero")
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    assert opt.last["analog_time"] == pytest.approx(201.0)
    assert opt.last["device_seconds"] > 201.0 * 1e-6


def test_tngd_error_decays_with_analog_time_like_the_noise_free_ou_mean():
    model, X, y = _problem("cross_entropy")
    expected, A = _exact(model, X, y)
    g = _reference(model, X, y, "cross_entropy")[2]
    lam, Q = torch.linalg.eigh(A)
    for t in (0.5, 2.0, 8.0):
        ou = OU(dt=t, num_samples=1, noise=0.0, method="exact")
        got, _ = _one_step(ou, warm_start="gradient")
        # the final state after one exact step of length t: x* + e^{-At}(g − x*)
        theory = expected + Q @ (torch.exp(-lam * t) * (Q.T @ (g - expected)))
        torch.testing.assert_close(got, theory, atol=1e-10, rtol=0)


def test_tngd_at_zero_analog_time_from_the_gradient_is_an_sgd_step():
    model, X, y = _problem("cross_entropy")
    sgd_model = copy.deepcopy(model)
    ou = OU(dt=1e-12, num_samples=1, noise=0.0, method="euler")
    opt = NGD(model, "cross_entropy", lr=0.3, damping=LAM, solver=ou, warm_start="gradient")
    opt.step(X, y)
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=0.3)
    loss_value(sgd_model(X), y, "cross_entropy").backward()
    sgd.step()
    for p, q in zip(model.parameters(), sgd_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-10, rtol=0)


def test_tngd_adam_with_zero_betas_is_adam_fed_the_natural_gradient():
    model, X, y = _problem("cross_entropy")
    adam_model = copy.deepcopy(model)
    expected, _ = _exact(model, X, y)
    opt = NGD(model, "cross_entropy", lr=0.01, damping=LAM, solver=Cholesky(), adam=True)
    opt.step(X, y)
    adam = torch.optim.Adam(adam_model.parameters(), lr=0.01, betas=(0.0, 0.0), eps=1e-8)
    for p, chunk in zip(
        adam_model.parameters(),
        torch.split(expected, [p.numel() for p in adam_model.parameters()]),
        strict=True,
    ):
        p.grad = chunk.view_as(p).clone()
    adam.step()
    for p, q in zip(model.parameters(), adam_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-10, rtol=0)


def test_linear_least_squares_is_solved_in_one_step_and_lm_sees_an_exact_quadratic():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 4, generator=g, dtype=torch.float64)
    y = torch.randn(20, 2, generator=g, dtype=torch.float64)
    model = nn.Linear(4, 2).double()
    opt = NGD(model, "mse", lr=1.0, damping=1e-9, solver=Cholesky(), adaptive_damping=True,
              damping_bounds=(1e-12, 1.0))
    opt.step(X, y)
    Xa = torch.cat([X, torch.ones(20, 1, dtype=torch.float64)], 1)
    W = torch.linalg.lstsq(Xa, y).solution
    torch.testing.assert_close(model.weight.detach(), W[:4].T, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.bias.detach(), W[4], atol=1e-6, rtol=0)
    assert opt.last["rho"] == pytest.approx(1.0, abs=1e-6)
    assert opt.param_groups[0]["damping"] == pytest.approx(1e-9 / 1.5)


def test_lm_damping_grows_when_the_quadratic_model_overpromises():
    model, X, y = _problem("cross_entropy")
    opt = NGD(model, "cross_entropy", lr=40.0, damping=1e-3, solver=Cholesky(),
              adaptive_damping=True)
    opt.step(X, y)
    assert opt.last["rho"] < 0.25
    assert opt.param_groups[0]["damping"] == pytest.approx(1.5e-3)


def test_long_delay_warm_starts_from_the_previous_systems_solution():
    model, X, y = _problem("cross_entropy")
    stale, _ = _exact(model, X, y)  # A_1⁻¹ g_1 at the first parameters
    ou = OU(dt=1e-12, num_samples=1, noise=0.0, method="exact")
    opt = NGD(model, "cross_entropy", lr=0.5, damping=LAM, solver=ou, delay=1e3)
    opt.step(X, y)
    fresh, _ = _exact(model, X, y)  # A_2⁻¹ g_2 at the parameters after step 1
    opt.step(X, y)
    assert opt.last["delay_time"] == pytest.approx(1e3)
    # t ≈ 0 after a long delay on (A_1, g_1): ñ_2 = A_1⁻¹ g_1, the previous system's solution
    torch.testing.assert_close(_natgrad(opt), stale, atol=1e-8, rtol=0)
    assert float(torch.linalg.vector_norm(fresh - stale)) > 1e-3


def test_state_dict_round_trips_and_continues_identically():
    model, X, y = _problem("cross_entropy")
    opt = NGD(model, "cross_entropy", lr=0.01, damping=0.1, solver=CG(tol=1e-12), adam=True,
              betas=(0.9, 0.99), adaptive_damping=True)
    opt.step(X, y)
    clone = copy.deepcopy(model)
    opt2 = NGD(clone, "cross_entropy", lr=0.01, damping=0.1, solver=CG(tol=1e-12), adam=True,
               betas=(0.9, 0.99), adaptive_damping=True)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0]["damping"] == opt.param_groups[0]["damping"]
    opt.step(X, y)
    opt2.step(X, y)
    for p, q in zip(model.parameters(), clone.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=0)


def test_records_report_solver_diagnostics_and_modelled_device_time():
    _, opt = _one_step(CG(tol=1e-10))
    rec = opt.last
    assert rec["iterations"] > 0 and rec["converged"] and rec["residual"] <= 1e-10
    assert rec["device_seconds"] is None and rec["step_seconds"] >= rec["solve_seconds"] > 0
    _, opt = _one_step(OU(dt=0.5, num_samples=10, noise=1e-3, method="euler", seed=0))
    assert opt.last["analog_time"] == pytest.approx(5.0) and opt.last["device_seconds"] > 0


def test_float32_model_stays_float32():
    model, X, y = _problem("cross_entropy")
    model, X = model.float(), X.float()
    opt = NGD(model, "cross_entropy", lr=0.1, damping=0.1, solver=Woodbury())
    loss = opt.step(X, y)
    assert loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": [torch.zeros(2)]}, "model must be an nn.Module"),
        ({"loss": "hinge"}, "loss must be one of"),
        ({"lr": -1.0}, "lr must be a positive"),
        ({"damping": 0.0}, "damping must be a positive"),
        ({"solver": "cg"}, "solver must be a natvi.linalg solver"),
        ({"solver": Woodbury(), "form": "matrix_free"}, "Woodbury needs"),
        ({"delay": 1.0}, "needs solver=natvi.linalg.OU"),
        ({"warm_start": "last"}, "warm_start must be one of"),
        ({"betas": (1.0, 0.0)}, "betas"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, match):
    model, _, _ = _problem("cross_entropy")
    args = {"model": model, **kwargs}
    with pytest.raises(ValueError, match=match):
        NGD(**args)


def test_a_closure_is_refused_with_the_batch_api_explained():
    model, X, y = _problem("cross_entropy")
    opt = NGD(model)
    with pytest.raises(ValueError, match=r"opt.step\(inputs, targets\)"):
        opt.step(lambda: loss_value(model(X), y, "cross_entropy"), None)


def test_resuming_with_a_delay_continues_the_uninterrupted_trajectory():
    def opt_for(model):
        ou = OU(dt=0.25, num_samples=4, noise=0.0, method="exact")
        return NGD(model, "cross_entropy", lr=0.5, damping=LAM, solver=ou, delay=1.0)

    model, X, y = _problem("cross_entropy")
    opt = opt_for(model)
    opt.step(X, y)
    resumed_model = copy.deepcopy(model)
    resumed = opt_for(resumed_model)
    resumed.load_state_dict(opt.state_dict())
    for _ in range(2):
        opt.step(X, y)
        resumed.step(X, y)
        assert resumed.last["delay_time"] == pytest.approx(1.0)
    for p, q in zip(model.parameters(), resumed_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=0)


def test_the_delayed_device_run_keeps_every_solver_setting(monkeypatch):
    from natvi.linalg import ou as ou_module

    seen = []
    real = ou_module.max_eigenvalue

    def spy(op, power_iterations=50):
        seen.append(power_iterations)
        return real(op, power_iterations)

    monkeypatch.setattr(ou_module, "max_eigenvalue", spy)
    model, X, y = _problem("cross_entropy")
    ou = OU(dt=0.05, num_samples=4, noise=0.0, method="euler", power_iterations=7, tau=2e-6)
    opt = NGD(model, "cross_entropy", lr=0.1, damping=LAM, solver=ou, form="matrix_free",
              delay=0.2)
    opt.step(X, y)
    opt.step(X, y)
    assert len(seen) == 4 and set(seen) == {7}  # two solves and two delayed runs
    assert opt.last["delay_device_seconds"] > 0.2 * 2e-6
