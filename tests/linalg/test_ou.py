"""The OU solver against theory: bias, variance, Euler → exact, inverse, sampler, stability."""

from __future__ import annotations

import math

import pytest
import torch

from natvi.linalg import OU, DeviceModel, LowRankPlusDiag, Operator, max_eigenvalue
from natvi.linalg import ou_theory as theory
from tests.linalg.problems import rhs, spd

CONDITION_NUMBERS = [10.0, 1e2, 1e3, 1e4]


def _reference_average(A, b, x0, dt, N, B):
    """Noise-free time average by stepping the exact transition matrix e^{−A dt} (no eigh)."""
    x_star = torch.linalg.solve(A, b)
    step = torch.linalg.matrix_exp(-A * dt)
    w = torch.linalg.matrix_power(step, B) @ (x0 - x_star)
    total = torch.zeros_like(w)
    for _ in range(N):
        w = step @ w
        total = total + w
    return x_star + total / N, x_star + w


@pytest.mark.parametrize("cond", CONDITION_NUMBERS)
def test_noise_free_average_and_final_match_predicted_bias(cond):
    A, b, x0 = spd(6, cond=cond), rhs((6,)), rhs((6,), seed=3)
    dt, N, B = 0.02, 300, 7
    res = OU(dt=dt, num_samples=N, burnin=B, noise=0.0, method="exact").solve(A, b, x0=x0)
    x_star = torch.linalg.solve(A, b)
    avg_ref, final_ref = _reference_average(A, b, x0, dt, N, B)
    torch.testing.assert_close(res.x, avg_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(res.final, final_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(
        res.x - x_star, theory.time_average_bias(A, b, x0, dt, N, B), atol=1e-10, rtol=0
    )
    torch.testing.assert_close(
        res.final - x_star, theory.final_state_bias(A, b, x0, res.analog_time), atol=1e-10, rtol=0
    )


@pytest.mark.parametrize("cond", CONDITION_NUMBERS)
def test_noisy_error_matches_theory_within_statistical_tolerance(cond):
    n, R, dt, N, B = 6, 1500, 0.05, 400, 10
    A, b = spd(n, cond=cond), rhs((n,))
    x0 = torch.zeros(n, dtype=torch.float64)
    ou = OU(dt=dt, num_samples=N, burnin=B, noise=0.7, method="exact", seed=int(cond))
    res = ou.solve(A, b.unsqueeze(-1).expand(n, R).contiguous())  # R independent runs
    err = res.x - torch.linalg.solve(A, b).unsqueeze(-1)
    bias = theory.time_average_bias(A, b, x0, dt, N, B)
    cov = theory.time_average_covariance(A, dt, N, B, noise=0.7)
    # mean error: Mahalanobis distance ~ χ²_n under the theory
    d = err.mean(1) - bias
    chi2 = float(d @ torch.linalg.solve(cov / R, d))
    assert chi2 < 35.0  # P(χ²_6 > 35) ≈ 4e-6
    # squared error: within 5 standard errors of ‖bias‖² + tr Cov
    sq = (err * err).sum(0)
    expected = theory.expected_squared_error(A, b, x0, dt, N, B, noise=0.7)
    assert abs(float(sq.mean() - expected)) < 5 * float(sq.std()) / math.sqrt(R)
    # covariance: trace within 5 standard errors
    centred = err - err.mean(1, keepdim=True)
    q = (centred * centred).sum(0)
    assert abs(float(q.mean() - cov.trace())) < 5 * float(q.std()) / math.sqrt(R)


def test_variance_decays_like_two_kappa_over_lambda_squared_t():
    """Long runs reach the continuous-time law Var x̄ ≈ 2 κ0 A⁻² / t."""
    A = spd(4, cond=10.0)
    t = 2000.0
    cov = theory.time_average_covariance(A, dt=0.01, num_samples=int(t / 0.01), noise=1.0)
    Ainv = torch.linalg.inv(A)
    torch.testing.assert_close(cov, 2 * Ainv @ Ainv / t, rtol=2e-2, atol=1e-8)


def test_euler_converges_to_exact_as_dt_shrinks():
    A, b, x0 = spd(5, cond=20.0), rhs((5,)), rhs((5,), seed=4)
    t = 0.5
    exact = OU(dt=t / 50, num_samples=50, noise=0.0, method="exact").solve(A, b, x0=x0)
    errors = []
    for steps in (50, 100, 200, 400):
        euler = OU(dt=t / steps, num_samples=steps, noise=0.0, method="euler")
        fine = OU(dt=t / steps, num_samples=steps, noise=0.0, method="exact")
        e = euler.solve(A, b, x0=x0)
        errors.append(float((e.final - exact.final).norm()))
        assert float((e.x - fine.solve(A, b, x0=x0).x).norm()) < 10 * t / steps
    ratios = [errors[i] / errors[i + 1] for i in range(3)]
    assert all(1.8 < r < 2.2 for r in ratios), ratios  # first order in dt
    assert errors[-1] < 2e-3


def test_euler_stationary_covariance_approaches_inverse_as_dt_shrinks():
    A = spd(3, cond=4.0)
    Ainv = torch.linalg.inv(A)
    ou = OU(dt=0.02, num_samples=40_000, burnin=500, method="euler", seed=0)
    assert float((ou.inverse(A) - Ainv).norm() / Ainv.norm()) < 0.1


@pytest.mark.parametrize("method", ["exact", "euler"])
def test_inverse_reproduces_a_inverse(method):
    A = spd(4, cond=5.0)
    dt = 0.3 if method == "exact" else 0.05
    ou = OU(dt=dt, num_samples=30_000, burnin=200, noise=2.0, method=method, seed=1)
    Ainv = torch.linalg.inv(A)
    tol = 0.06 if method == "exact" else 0.1
    assert float((ou.inverse(A) - Ainv).norm() / Ainv.norm()) < tol


def test_sampler_reproduces_target_gaussian_moments():
    S = spd(4, cond=8.0, seed=5)
    m = rhs((4,), seed=6)
    P = torch.linalg.inv(S)
    theta1, theta2 = P @ m, -0.5 * P
    x = OU(dt=0.5, burnin=100, method="exact", seed=2).sample(theta1, theta2, 20_000)
    assert x.shape == (20_000, 4)
    torch.testing.assert_close(x.mean(0), m, atol=0.08, rtol=0)
    assert float((torch.cov(x.T) - S).norm() / S.norm()) < 0.06


def test_sampler_is_batched_over_gaussians():
    P = spd(3, cond=3.0, batch=(2,))
    theta1 = rhs((2, 3))
    x = OU(dt=0.5, burnin=50, method="exact", seed=0).sample(theta1, -0.5 * P, 8000)
    assert x.shape == (8000, 2, 3)
    torch.testing.assert_close(
        x.mean(0), torch.linalg.solve(P, theta1.unsqueeze(-1)).squeeze(-1), atol=0.1, rtol=0
    )


@pytest.mark.parametrize("method", ["exact", "euler"])
def test_warm_start_at_solution_stays_there(method):
    A, b = spd(5, cond=100.0), rhs((5,))
    x_star = torch.linalg.solve(A, b)
    res = OU(dt=0.01, num_samples=200, noise=0.0, method=method).solve(A, b, x0=x_star)
    torch.testing.assert_close(res.x, x_star, atol=1e-12, rtol=0)
    torch.testing.assert_close(res.final, x_star, atol=1e-12, rtol=0)


def test_euler_refuses_dt_beyond_stability_bound():
    A = torch.diag(torch.tensor([1.0, 10.0], dtype=torch.float64))
    b = torch.ones(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="stability bound 2/λ_max = 0.2"):
        OU(dt=0.25, method="euler").solve(A, b)
    OU(dt=0.19, num_samples=10, method="euler", seed=0).solve(A, b)
    op = Operator(lambda v: A @ v, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="power iteration"):
        OU(dt=0.25, method="euler").solve(op, b)
    low_rank = LowRankPlusDiag(1.0, torch.tensor([[3.0], [0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="stability"):
        OU(dt=0.25, method="euler").solve(low_rank, b)


def test_max_eigenvalue_exact_for_dense_and_low_rank():
    A = spd(6, cond=50.0)
    lam, exact = max_eigenvalue(A)
    assert exact and abs(lam - float(torch.linalg.eigvalsh(A).max())) < 1e-9
    U = rhs((6, 2))
    lr = LowRankPlusDiag(0.3, U)
    lam, exact = max_eigenvalue(lr)
    assert exact and abs(lam - float(torch.linalg.eigvalsh(lr.to_dense()).max())) < 1e-9


def test_seeded_runs_reproduce_and_columns_are_independent():
    A, b = spd(4, cond=10.0), rhs((4, 2))
    b[:, 1] = b[:, 0]
    r1 = OU(dt=0.1, num_samples=50, method="exact", seed=7).solve(A, b)
    r2 = OU(dt=0.1, num_samples=50, method="exact", seed=7).solve(A, b)
    torch.testing.assert_close(r1.x, r2.x, atol=0, rtol=0)
    assert float((r1.x[:, 0] - r1.x[:, 1]).abs().max()) > 1e-3


def test_result_reports_analog_and_device_time():
    A, b = spd(10, cond=10.0), rhs((10,))
    res = OU(dt=0.1, num_samples=300, burnin=20, method="exact", seed=0).solve(A, b)
    assert res.analog_time == pytest.approx(32.0) and res.iterations == 320
    model = DeviceModel()
    expected = 32.0 * 1e-6 + model.transfer_seconds(10 * 10 + 2 * 10 + 2 * 10)
    assert res.device_seconds == pytest.approx(expected)
    assert res.digital_seconds > 0 and res.final.shape == (10,)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dt": 0.0}, "dt"),
        ({"num_samples": 0}, "num_samples"),
        ({"burnin": -1}, "burnin"),
        ({"noise": -1.0}, "noise"),
        ({"method": "rk4"}, "method"),
        ({"tau": 0.0}, "tau"),
    ],
)
def test_ou_validates_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OU(**kwargs)


def test_inverse_needs_noise_and_exact_needs_positive_definite():
    with pytest.raises(ValueError, match="noise"):
        OU(noise=0.0).inverse(spd(3))
    indefinite = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="positive definite"):
        OU(method="exact").solve(indefinite, torch.ones(2, dtype=torch.float64))


def test_replace_keeps_every_other_setting_and_rejects_unknown_ones():
    ou = OU(dt=0.3, num_samples=7, burnin=2, noise=0.5, method="exact", seed=4, tau=2e-6,
            bits=8, bandwidth=1e9, power_iterations=9)
    new = ou.replace(num_samples=3, seed=None)
    assert (new.dt, new.num_samples, new.burnin, new.noise, new.method, new.seed) == (
        0.3, 3, 2, 0.5, "exact", None)
    assert new.device_model == ou.device_model and new.power_iterations == 9
    with pytest.raises(ValueError, match="no setting 'steps'"):
        ou.replace(steps=3)
