"""Property tests: mean ↔ natural round trips over the whole domain of each family."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from natvi.expfam import (
    Bernoulli,
    Categorical,
    Exponential,
    Gamma,
    Multinomial,
    NaiveBayes,
    Poisson,
)

DT = torch.float64
floats = lambda lo, hi: st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def _t(xs) -> torch.Tensor:
    return torch.tensor(xs, dtype=DT)


@given(st.lists(floats(1e-6, 1 - 1e-6), min_size=1, max_size=5))
def test_bernoulli_mean_round_trip(ps):
    mu = _t(ps)
    fam = Bernoulli()
    torch.testing.assert_close(fam.to_mean(fam.to_natural(mu)), mu, rtol=1e-12, atol=1e-15)


@given(st.lists(floats(-12, 12), min_size=1, max_size=5))
def test_bernoulli_natural_round_trip(thetas):
    # 1 − σ(θ) keeps ~ e^{−|θ|} relative precision, so the range is where float64 round-trips
    theta = _t(thetas)
    fam = Bernoulli()
    torch.testing.assert_close(fam.to_natural(fam.to_mean(theta)), theta, rtol=1e-9, atol=1e-9)


@given(st.lists(floats(1e-8, 1e8), min_size=1, max_size=5))
def test_poisson_and_exponential_mean_round_trip(rates):
    mu = _t(rates)
    for fam in (Poisson(), Exponential()):
        torch.testing.assert_close(fam.to_mean(fam.to_natural(mu)), mu, rtol=1e-13, atol=0)


@given(st.lists(floats(1e-3, 1.0), min_size=2, max_size=6), st.integers(1, 20))
def test_multinomial_mean_round_trip(weights, n):
    p = _t(weights) / sum(weights)
    for fam, scale in ((Categorical(), 1), (Multinomial(n), n)):
        mu = scale * p[:-1]
        torch.testing.assert_close(fam.to_mean(fam.to_natural(mu)), mu, rtol=1e-11, atol=1e-14)


@given(floats(0.02, 200.0), floats(0.01, 100.0))
def test_gamma_round_trips_recover_shape_and_rate(alpha, beta):
    fam = Gamma()
    theta = fam.from_shape_rate(_t(alpha), _t(beta))
    back = fam.to_natural(fam.to_mean(theta))
    for a, b in zip(back, theta):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@given(st.lists(floats(0.05, 1.0), min_size=3 * 4 * 3, max_size=3 * 4 * 3))
def test_naive_bayes_mean_round_trip(weights):
    # a random naive-Bayes joint: p(y) and p(x_i | y) from positive weights
    fam = NaiveBayes(3, [4, 3])
    w = _t(weights).reshape(3, 4, 3)
    p_y = w[:, 0, 0] / w[:, 0, 0].sum()
    p_x1 = w[:, :, 1] / w[:, :, 1].sum(-1, keepdim=True)
    p_x2 = w[:, :3, 2] / w[:, :3, 2].sum(-1, keepdim=True)
    mu = (p_y[:-1], p_y[:, None] * torch.cat([p_x1[:, :-1], p_x2[:, :-1]], -1))
    back = fam.to_mean(fam.to_natural(mu))
    for a, b in zip(back, mu):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
