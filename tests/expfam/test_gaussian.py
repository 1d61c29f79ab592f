"""The Gaussian families against closed forms and torch.distributions."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from natvi.expfam import (
    DiagGaussian,
    Gaussian,
    expectation_to_natural,
    meancov_to_natural,
    natural_to_expectation,
    natural_to_meancov,
)
from tests.gaussians import random_meancov


def test_gradient_of_log_partition_is_expectation():
    fam = Gaussian()
    theta = meancov_to_natural(*random_meancov((2,), 4))
    eta = natural_to_expectation(*theta)
    value, vjp = torch.func.vjp(fam.log_partition, theta)
    (grad,) = vjp(torch.ones_like(value))
    torch.testing.assert_close(grad[0], eta[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fam.project_tangent(grad)[1], eta[1], rtol=1e-10, atol=1e-10)


def test_log_partition_matches_its_definition():
    theta1, theta2 = meancov_to_natural(*random_meancov((), 3))
    want = -0.25 * theta1 @ torch.linalg.solve(theta2, theta1) - 0.5 * torch.logdet(-2 * theta2)
    torch.testing.assert_close(Gaussian().log_partition((theta1, theta2)), want)


def test_natural_expectation_round_trip_batched():
    theta = meancov_to_natural(*random_meancov((3, 2), 5, cond=1e3))
    back = expectation_to_natural(*natural_to_expectation(*theta))
    for a, b in zip(back, theta):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_fisher_vp_is_hessian_of_log_partition_times_vector():
    fam = Gaussian()
    theta = meancov_to_natural(*random_meancov((), 3))
    v = (torch.randn(3, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64))
    v = (v[0], v[1] + v[1].mT)
    Fv = fam.fisher_vp(theta, v)
    grad = lambda th: fam.project_tangent(torch.func.grad(fam.log_partition)(th))
    _, want = torch.func.jvp(grad, (theta,), (v,))
    for a, b in zip(Fv, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kl_and_entropy_match_torch_distributions(dtype):
    fam = Gaussian()
    (mq, Sq), (mp, Sp) = (
        random_meancov((2,), 4, generator=torch.Generator().manual_seed(s), dtype=dtype)
        for s in (1, 2)
    )
    got = fam.kl(meancov_to_natural(mq, Sq), meancov_to_natural(mp, Sp))
    want = kl_divergence(MultivariateNormal(mq, Sq), MultivariateNormal(mp, Sp))
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    ent = fam.entropy(meancov_to_natural(mq, Sq))
    torch.testing.assert_close(ent, MultivariateNormal(mq, Sq).entropy(), rtol=tol, atol=tol)
    assert got.dtype == dtype


def test_diag_kl_and_entropy_match_torch_distributions():
    fam = DiagGaussian()
    (mq, vq), (mp, vp) = (
        random_meancov((3,), 4, diagonal=True, generator=torch.Generator().manual_seed(s))
        for s in (1, 2)
    )
    got = fam.kl(fam.from_meancov(mq, vq), fam.from_meancov(mp, vp))
    want = kl_divergence(Normal(mq, vq.sqrt()), Normal(mp, vp.sqrt())).sum(-1)
    torch.testing.assert_close(got, want)
    ent = fam.entropy(fam.from_meancov(mq, vq))
    torch.testing.assert_close(ent, Normal(mq, vq.sqrt()).entropy().sum(-1))


def test_diag_family_agrees_with_full_family_on_diagonal_matrices():
    m, var = random_meancov((2,), 3, diagonal=True)
    full = meancov_to_natural(m, torch.diag_embed(var))
    diag = DiagGaussian().from_meancov(m, var)
    torch.testing.assert_close(full[1].diagonal(dim1=-2, dim2=-1), diag[1])
    torch.testing.assert_close(Gaussian().log_partition(full), DiagGaussian().log_partition(diag))
    eta_d = DiagGaussian().to_mean(diag)
    eta_f = Gaussian().to_mean(full)
    torch.testing.assert_close(eta_f[1].diagonal(dim1=-2, dim2=-1), eta_d[1])


@pytest.mark.parametrize("family", [Gaussian(), DiagGaussian()], ids=["full", "diag"])
def test_sample_moments(family):
    g = torch.Generator().manual_seed(0)
    diagonal = isinstance(family, DiagGaussian)
    m, S = random_meancov((), 3, diagonal=diagonal, cond=5.0)
    x = family.sample(family.from_meancov(m, S), 200_000, generator=g)
    assert x.shape == (200_000, 3)
    torch.testing.assert_close(x.mean(0), m, rtol=0, atol=0.03)
    cov = torch.cov(x.T)
    torch.testing.assert_close(cov.diagonal() if diagonal else cov, S, rtol=0.03, atol=0.03)


def test_float32_round_trip_is_stable():
    m, S = random_meancov((4,), 6, cond=100.0, dtype=torch.float32)
    m2, S2 = natural_to_meancov(*meancov_to_natural(m, S))
    torch.testing.assert_close(m2, m, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(S2, S, rtol=1e-3, atol=1e-3)
    assert torch.equal(S2, S2.mT)
