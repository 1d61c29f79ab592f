"""Closed-form exponential families against autodiff references: the dense Fisher solve, the
generic fallback of the base class, and round trips of the natural ↔ mean maps."""

from __future__ import annotations

import itertools

import pytest
import torch

import natvi.expfam as expfam
from natvi.expfam import ExponentialFamily
from tests.expfam.families import (
    CASES,
    as_tuple,
    dense_fisher,
    element,
    event_dims,
    flatten,
    random_like,
    unflatten,
)

BATCH = (2, 3)
TOL = dict(rtol=1e-10, atol=1e-10)


def _close(a, b, **tol):
    for x, y in zip(as_tuple(a), as_tuple(b), strict=True):
        torch.testing.assert_close(x, y, **(tol or TOL))


def test_every_exported_family_has_a_case():
    covered = {type(c.family) for c in CASES}
    gaussians = {expfam.Gaussian, expfam.DiagGaussian}  # tested in test_gaussian.py
    for name in expfam.__all__:
        obj = getattr(expfam, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, ExponentialFamily)
            and obj is not ExponentialFamily
        ):
            assert obj in covered | gaussians, f"{name} has no case in tests/expfam/families.py"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_closed_form_natural_gradient_equals_dense_fisher_solve(case):
    gen = torch.Generator().manual_seed(1)
    theta = case.theta(BATCH, gen)
    grad = random_like(theta, gen)
    nat = case.family.natural_gradient(theta, grad)
    ev = event_dims(case)
    for idx in itertools.product(*map(range, BATCH)):
        th, g, n = (element(x, idx, ev) for x in (theta, grad, nat))
        F = dense_fisher(case.family, th)
        want = torch.linalg.solve(F, flatten(g))
        torch.testing.assert_close(flatten(n), want, **TOL)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_generic_autodiff_fallback_equals_closed_form(case):
    gen = torch.Generator().manual_seed(2)
    theta = case.theta(BATCH, gen)
    grad = random_like(theta, gen)
    generic = ExponentialFamily.natural_gradient(case.family, theta, grad)
    _close(generic, case.family.natural_gradient(theta, grad))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_mean_map_is_gradient_of_log_partition(case):
    theta = case.theta(BATCH, torch.Generator().manual_seed(3))
    _close(case.family.to_mean(theta), ExponentialFamily.to_mean(case.family, theta))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_fisher_vector_product_is_hessian_times_vector(case):
    gen = torch.Generator().manual_seed(4)
    theta = case.theta((), gen)
    v = random_like(theta, gen)
    want = dense_fisher(case.family, theta) @ flatten(v)
    torch.testing.assert_close(flatten(case.family.fisher_vp(theta, v)), want, **TOL)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_natural_mean_natural_round_trip_batched(case):
    theta = case.theta(BATCH, torch.Generator().manual_seed(5))
    back = case.family.to_natural(case.family.to_mean(theta))
    _close(back, theta, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_maps_keep_float32(case):
    theta = case.theta((3,), torch.Generator().manual_seed(6))
    theta32 = (
        unflatten(flatten(theta).float(), theta)
        if not isinstance(theta, tuple)
        else tuple(t.float() for t in theta)
    )
    for out in (case.family.to_mean(theta32), case.family.natural_gradient(theta32, theta32)):
        assert all(t.dtype == torch.float32 for t in as_tuple(out))


class _UserBernoulli(ExponentialFamily):
    """A user's family: only the log-partition and the inverse mean map."""

    def log_partition(self, theta):
        return torch.nn.functional.softplus(theta)

    def to_natural(self, mu):
        return torch.log(mu / (1 - mu))


def test_user_family_with_two_maps_gets_exact_natural_gradient():
    theta = torch.linspace(-3, 3, 7, dtype=torch.float64)
    g = torch.cos(theta)
    p = torch.sigmoid(theta)
    torch.testing.assert_close(
        _UserBernoulli().natural_gradient(theta, g), g / (p * (1 - p)), **TOL
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: expfam.Bernoulli().to_natural(torch.tensor([0.5, 1.0])), "mu must be in the open"),
        (lambda: expfam.Poisson().to_natural(torch.tensor([-1.0])), "mu must be positive"),
        (lambda: expfam.Categorical().to_natural(torch.tensor([0.6, 0.5])), "mu must be positive"),
        (lambda: expfam.Categorical().to_mean(torch.tensor(1.0)), r"\[..., K−1\]"),
        (lambda: expfam.Multinomial(0), "total_count must be positive"),
        (lambda: expfam.Gamma().to_mean((torch.tensor(-2.0), torch.tensor(-1.0))), "theta1"),
        (lambda: expfam.Gamma().to_natural((torch.tensor(1.0), torch.tensor(2.0))), "Jensen"),
        (lambda: expfam.Exponential().to_mean(torch.tensor([1.0])), "theta must be negative"),
        (lambda: expfam.NaiveBayes(3, [2, 1]), "cardinalities"),
        (lambda: expfam.NaiveBayes(3, [2]).to_mean((torch.zeros(3), torch.zeros(3, 1))), "shapes"),
        (lambda: expfam.Poisson().to_mean(torch.tensor([float("nan")])), "NaN"),
    ],
)
def test_out_of_domain_input_raises_value_error_naming_it(call, match):
    with pytest.raises(ValueError, match=match):
        call()
