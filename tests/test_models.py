"""The model zoo: every builder gives a consistent problem; the generated data have the stated
properties; the ill-conditioned problem's exact optimum is the exact GP posterior."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from models import (
    breast_cancer,
    digits_softmax,
    heteroskedastic,
    ill_conditioned,
    poisson_counts,
    robust_regression,
    two_moons,
)
from models._problem import Problem

SMALL = {
    "two_moons": functools.partial(two_moons.build, num_data=200, num_inducing=10),
    "breast_cancer": functools.partial(breast_cancer.build, num_inducing=10),
    "digits_softmax": functools.partial(digits_softmax.build, num_inducing=10),
    "poisson_counts": functools.partial(poisson_counts.build, num_data=100, num_inducing=10),
    "robust_regression": functools.partial(robust_regression.build, num_data=100, num_inducing=10),
    "heteroskedastic": functools.partial(heteroskedastic.build, num_data=100, num_inducing=10),
    "ill_conditioned": functools.partial(ill_conditioned.build, num_data=50, num_inducing=10),
}


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_builder_returns_a_consistent_problem(name: str, dtype: torch.dtype) -> None:
    from natvi.gp import SVGP

    p = SMALL[name](seed=0, dtype=dtype)
    assert isinstance(p, Problem) and isinstance(p.model, SVGP) and p.name == name
    assert p.X.dtype == p.X_test.dtype == p.Z.dtype == dtype
    assert p.X.ndim == 2 and p.X.shape[1] == p.X_test.shape[1] == p.Z.shape[1]
    assert p.y.shape == p.X.shape[:1] and p.y_test.shape == p.X_test.shape[:1]
    assert p.settings["seed"] == 0 and p.settings["dtype"] == dtype
    assert p.num_latent == p.model.num_latent
    elbo = p.model.elbo(p.X, p.y)
    assert elbo.dtype == dtype and torch.isfinite(elbo)
    lpd = p.model.predict_log_density(p.X_test, p.y_test)
    assert lpd.shape == p.y_test.shape and torch.isfinite(lpd).all()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_builders_are_deterministic_in_the_seed(name: str) -> None:
    a, b, c = SMALL[name](seed=3), SMALL[name](seed=3), SMALL[name](seed=4)
    assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y) and torch.equal(a.Z, b.Z)
    assert not (torch.equal(a.X, c.X) and torch.equal(a.Z, c.Z))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_an_unknown_setting_is_a_value_error_naming_it(name: str) -> None:
    with pytest.raises(ValueError, match="num_inducng"):
        SMALL[name](num_inducng=5)


def test_classification_labels_and_sizes() -> None:
    p = two_moons.build(num_data=500, num_inducing=10)
    assert set(p.y.unique().tolist()) == {0.0, 1.0}
    assert p.num_data + p.X_test.shape[0] == 500
    assert torch.allclose(p.X.mean(0), torch.zeros(2, dtype=p.X.dtype), atol=1e-12)
    bc = breast_cancer.build(num_inducing=10)
    assert bc.num_data + bc.X_test.shape[0] == 569 and bc.X.shape[1] == 30
    d = digits_softmax.build(num_inducing=10)
    assert d.y.dtype == torch.int64 and set(d.y.unique().tolist()) == set(range(10))
    assert d.model.num_latent == 10


def test_poisson_counts_follow_the_known_rate() -> None:
    X, y, X_test, _ = poisson_counts.make_data(20000, 10, seed=1)
    rate = np.exp(poisson_counts.true_log_rate(X[:, 0]))
    # Pearson residuals of a Poisson: mean 0, variance 1.
    z = (y - rate) / np.sqrt(rate)
    assert abs(z.mean()) < 4 / math.sqrt(len(z))
    assert abs(z.var() - 1) < 0.05


def test_robust_regression_has_the_stated_outlier_fraction_and_clean_test_targets() -> None:
    X, y, X_test, y_test = robust_regression.make_data(20000, 2000, 0.1, seed=2)
    resid = np.abs(y - robust_regression.true_function(X[:, 0]))
    assert abs((resid > 1.0).mean() - 0.1) < 0.01
    assert (np.abs(y_test - robust_regression.true_function(X_test[:, 0])) < 1.0).all()


def test_heteroskedastic_noise_scale_is_the_stated_function() -> None:
    X, y, _, _ = heteroskedastic.make_data(50000, 1, seed=3)
    z = (y - heteroskedastic.true_mean(X[:, 0])) / np.exp(heteroskedastic.true_log_scale(X[:, 0]))
    assert abs(z.std() - 1) < 0.02


@pytest.mark.parametrize("whiten", [True, False])
def test_exact_optimum_is_the_exact_gp_posterior_when_z_equals_x(whiten: bool) -> None:
    """With Z = X the SVGP optimum is the exact GP: q(u) = p(f | y) and ELBO = log p(y)."""
    p = ill_conditioned.build(num_data=15, num_inducing=15, noise=0.05, whiten=whiten)
    p.Z = p.X.clone()
    m, S, elbo = ill_conditioned.exact_optimum(p, jitter=0.0)
    ell, s2, sig2 = p.lengthscale, p.outputscale, p.likelihood_params["noise"]
    K = s2 * torch.exp(-0.5 * torch.cdist(p.X / ell, p.X / ell).square())
    C = K + sig2 * torch.eye(15, dtype=K.dtype)
    mean = K @ torch.linalg.solve(C, p.y)
    cov = K - K @ torch.linalg.solve(C, K)
    logml = torch.distributions.MultivariateNormal(torch.zeros(15, dtype=K.dtype), C).log_prob(p.y)
    assert torch.allclose(elbo, logml, rtol=1e-8)
    if whiten:
        L = torch.linalg.cholesky(K)
        m, S = L @ m, L @ S @ L.T
    assert torch.allclose(m, mean, atol=1e-7)
    assert torch.allclose(S, cov, atol=1e-7)


@pytest.mark.parametrize("whiten", [True, False])
def test_one_natural_step_of_size_one_reaches_the_exact_optimum(whiten: bool) -> None:
    from natvi.optim import NaturalGradient

    p = ill_conditioned.build(noise=1e-3, whiten=whiten)
    m_star, S_star, elbo_star = ill_conditioned.exact_optimum(p)
    opt = NaturalGradient.for_model(p.model, lr=1.0)
    opt.zero_grad()
    (-p.model.elbo(p.X, p.y)).backward()
    opt.step()
    m, S = p.model.q.meancov()
    with torch.no_grad():
        assert torch.allclose(p.model.elbo(p.X, p.y), elbo_star, rtol=1e-7)
    assert torch.allclose(m, m_star, rtol=1e-5, atol=1e-6)


def test_condition_number_grows_as_the_noise_shrinks() -> None:
    kappas = []
    for noise in (1.0, 1e-2, 1e-4):
        _, S, _ = ill_conditioned.exact_optimum(ill_conditioned.build(noise=noise))
        kappas.append(ill_conditioned.condition_number(S))
    assert kappas[0] < kappas[1] < kappas[2]
    assert kappas[2] > 1e4 * kappas[0] / 10


def test_exact_optimum_rejects_a_non_gaussian_problem() -> None:
    p = ill_conditioned.build(likelihood="bernoulli")
    with pytest.raises(ValueError, match="Gaussian likelihood"):
        ill_conditioned.exact_optimum(p)
