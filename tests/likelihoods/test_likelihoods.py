"""Every likelihood against Monte Carlo; closed forms against quadrature; label checks."""

from __future__ import annotations

import math

import pytest
import torch

import natvi.likelihoods as L
from natvi.likelihoods import Likelihood

DT = torch.float64
N = 6
S_MC = 100_000


def _f(num_latent, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    shape = (N,) if num_latent == 1 else (N, num_latent)
    return (scale * torch.randn(shape, generator=g, dtype=DT),
            0.05 + torch.rand(shape, generator=g, dtype=DT))


def _y(kind):
    g = torch.Generator().manual_seed(1)
    return {
        "real": torch.randn(N, generator=g, dtype=DT),
        "binary": torch.tensor([0, 1, 1, 0, 1, 0], dtype=DT),
        "count": torch.tensor([0, 1, 3, 0, 7, 2], dtype=DT),
        "unit": torch.rand(N, generator=g, dtype=DT) * 0.9 + 0.05,
        "positive": torch.rand(N, generator=g, dtype=DT) * 3 + 0.1,
        "class": torch.tensor([0, 2, 1, 1, 0, 2]),
    }[kind]


# class name -> (factory, label kind, bad labels)
CASES = {
    "Gaussian": (lambda: L.Gaussian(noise=0.3), "real", torch.tensor([0.0, math.nan])),
    "StudentT": (lambda: L.StudentT(df=4.0, scale=0.5), "real", torch.tensor([math.inf, 0.0])),
    "HeteroskedasticGaussian": (L.HeteroskedasticGaussian, "real", torch.tensor([math.nan, 1.0])),
    "Beta": (lambda: L.Beta(precision=5.0), "unit", torch.tensor([0.5, 1.0])),
    "Gamma": (lambda: L.Gamma(shape=2.0), "positive", torch.tensor([1.0, -0.5])),
    "Bernoulli": (L.Bernoulli, "binary", torch.tensor([0.0, -1.0])),
    "Poisson": (L.Poisson, "count", torch.tensor([2.0, 1.5])),
    "Softmax": (lambda: L.Softmax(3, num_samples=50_000), "class", torch.tensor([0, 3])),
    "RobustMax": (lambda: L.RobustMax(3, epsilon=0.05), "class", torch.tensor([-1, 0])),
}
LOGIT = (lambda: L.Bernoulli(link="logit"), "binary", torch.tensor([0.5, 1.0]))
ALL = list(CASES.values()) + [LOGIT]
IDS = list(CASES) + ["Bernoulli-logit"]


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_likelihood_class_is_tested():
    public = {c.__name__ for c in _subclasses(Likelihood) if not c.__name__.startswith("_")
              and c.__module__.startswith("natvi.")}
    assert public == set(CASES), public ^ set(CASES)


def _mc(lik, f_mean, f_var, fn):
    """Monte Carlo mean of fn(F) and its standard error, per datum."""
    g = torch.Generator().manual_seed(123)
    eps = torch.randn(S_MC, *f_mean.shape, generator=g, dtype=DT)
    vals = fn(f_mean + f_var.sqrt() * eps)
    return vals.mean(0), vals.std(0) / math.sqrt(S_MC)


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_variational_expectations_match_monte_carlo(case):
    make, kind, _ = case
    lik = make().to(DT)
    f_mean, f_var = _f(lik.num_latent)
    y = _y(kind)
    with torch.no_grad():
        ve = lik.variational_expectations(f_mean, f_var, y)
        mc, se = _mc(lik, f_mean, f_var, lambda F: lik.log_prob(F, y))
    assert ve.shape == (N,)
    assert bool(((ve - mc).abs() <= 6 * math.sqrt(2) * se + 1e-9).all()), (ve, mc, se)


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_predictive_moments_and_density_match_monte_carlo(case):
    make, kind, _ = case
    lik = make().to(DT)
    f_mean, f_var = _f(lik.num_latent, scale=0.5)
    y = _y(kind)
    with torch.no_grad():
        mean, var = lik.predict_mean_and_var(f_mean, f_var)
        dens = lik.predict_log_density(f_mean, f_var, y)
        mc_dens, se = _mc(lik, f_mean, f_var, lambda F: lik.log_prob(F, y).exp())
        tol = 6 * math.sqrt(2) * se / mc_dens + 1e-9
        assert bool(((dens - mc_dens.log()).abs() <= tol).all()), (dens, mc_dens.log())
        if lik.num_latent > 2:  # multi-class: class probabilities
            cols = [_mc(lik, f_mean, f_var, lambda F, c=c: lik.log_prob(
                F, torch.full((N,), c)).exp()) for c in range(lik.num_latent)]
            p = torch.stack([c[0] for c in cols], -1)
            se = torch.stack([c[1] for c in cols], -1)
            assert bool(((mean - p).abs() <= 6 * math.sqrt(2) * se + 1e-9).all())
            return
        m1, se1 = _mc(lik, f_mean, f_var, lik.conditional_mean)
        m2, se2 = _mc(lik, f_mean, f_var,
                      lambda F: lik.conditional_variance(F) + lik.conditional_mean(F) ** 2)
        assert bool(((mean - m1).abs() <= 6 * se1 + 1e-9).all()), (mean, m1)
        assert bool(((var + mean**2 - m2).abs() <= 6 * se2 + 1e-6 * m2.abs()).all()), (var, m2)


CLOSED = [c for c, i in zip(ALL, IDS) if i in ("Gaussian", "HeteroskedasticGaussian", "Gamma",
                                               "Poisson")]


@pytest.mark.parametrize("case", CLOSED, ids=lambda c: type(c[0]()).__name__)
def test_closed_forms_match_quadrature(case):
    make, kind, _ = case
    lik = make().to(DT)
    assert type(lik)._variational_expectations is not Likelihood._variational_expectations
    f_mean, f_var = _f(lik.num_latent)
    y = _y(kind)
    closed = lik.variational_expectations(f_mean, f_var, y)
    quad = lik.quadrature_expectations(f_mean, f_var, y, num_points=60)
    torch.testing.assert_close(closed, quad, rtol=1e-10, atol=1e-10)


def test_probit_predictions_closed_form_match_quadrature():
    lik = L.Bernoulli()
    f_mean, f_var = _f(1)
    p, _ = lik.predict_mean_and_var(f_mean, f_var)
    quad, _ = Likelihood._predict_mean_and_var(lik, f_mean, f_var)
    torch.testing.assert_close(p, quad, rtol=1e-8, atol=1e-10)


def test_robustmax_quadrature_matches_softmax_free_monte_carlo_for_many_classes():
    lik = L.RobustMax(5, epsilon=0.01)
    f_mean, f_var = _f(5, seed=3)
    P = lik.prob_max(f_mean, f_var)
    torch.testing.assert_close(P.sum(-1), torch.ones(N, dtype=DT), rtol=0, atol=1e-5)
    mc, se = _mc(lik, f_mean, f_var, lambda F: torch.nn.functional.one_hot(
        F.argmax(-1), 5).to(DT))
    se = (P * (1 - P) / S_MC).sqrt()  # binomial standard error (MC's own is 0 for rare classes)
    assert bool(((P - mc).abs() <= 6 * se + 1e-5).all())


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_labels_outside_the_support_raise(case):
    make, _, bad = case
    lik = make().to(DT)
    f_mean, f_var = _f(lik.num_latent)
    y = bad.to(DT) if bad.is_floating_point() else bad
    with pytest.raises(ValueError, match="y"):
        lik.variational_expectations(f_mean[:2], f_var[:2], y)


def test_bad_shapes_and_parameters_raise():
    with pytest.raises(ValueError, match="noise"):
        L.Gaussian(noise=-1.0)
    with pytest.raises(ValueError, match="link"):
        L.Bernoulli(link="cloglog")
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        L.Softmax(3).variational_expectations(torch.zeros(4), torch.ones(4), torch.zeros(4))
    lik = L.Gaussian(noise=0.25)
    assert abs(float(lik.noise.detach()) - 0.25) < 1e-15
    assert lik.num_latent == 1 and L.Softmax(4).num_latent == 4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.int64, torch.bool])
def test_bernoulli_accepts_zero_one_labels_of_any_dtype(dtype):
    from natvi.likelihoods import Bernoulli

    y = torch.tensor([0, 1, 1, 0]).to(dtype)
    assert Bernoulli().check_y(y) is y


@pytest.mark.parametrize("bad, message", [
    (0.5, "only 0 and 1 .*found 0.5"), (-1.0, "only 0 and 1 .*found -1"),
    (2.0, "only 0 and 1 .*found 2"), (float("nan"), "y contains NaN"),
    (float("inf"), "y contains infinite"), (-float("inf"), "y contains infinite"),
])
def test_bernoulli_rejects_other_labels_with_the_value_named(bad, message):
    from natvi.likelihoods import Bernoulli

    for dtype in (torch.float64, torch.float32):
        y = torch.tensor([0.0, 1.0, bad, 1.0], dtype=dtype)
        with pytest.raises(ValueError, match=message):
            Bernoulli().check_y(y)
