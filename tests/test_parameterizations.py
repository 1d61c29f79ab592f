"""Round trips ξ → θ → ξ (hypothesis), one distribution behind every parameterisation, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from natvi.parameterizations import BUILTIN, MeanCholesky, Natural, NaturalTril, Parameterization
from tests.gaussians import DiagMeanLogPrecision, MeanPrecisionCholesky, random_meancov

ALL = BUILTIN + (MeanPrecisionCholesky, DiagMeanLogPrecision)

gaussians = st.builds(
    lambda seed, M, b, cond: (seed, M, b, cond),
    seed=st.integers(0, 2**31 - 1),
    M=st.integers(1, 5),
    b=st.sampled_from([(), (2,), (3, 2)]),
    cond=st.floats(1.0, 1e3),
)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
@given(case=gaussians)
def test_from_natural_inverts_to_natural(cls, case):
    seed, M, batch, cond = case
    p = cls()
    g = torch.Generator().manual_seed(seed)
    xi = p.from_meancov(*random_meancov(batch, M, diagonal=p.diagonal, cond=cond, generator=g))
    back = p.from_natural(*p.to_natural(*xi))
    for name, a, b in zip(p.names, back, xi):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8 * cond, msg=name)


@given(case=gaussians)
def test_every_parameterisation_describes_the_same_distribution(case):
    seed, M, batch, cond = case
    g = torch.Generator().manual_seed(seed)
    m, S = random_meancov(batch, M, cond=cond, generator=g)
    for cls in ALL:
        p = cls()
        cov = S.diagonal(dim1=-2, dim2=-1) if p.diagonal else S
        xi = p.from_meancov(m, cov)
        m2, S2 = p.to_meancov(*xi)
        torch.testing.assert_close(m2, m, rtol=1e-7, atol=1e-7 * cond, msg=cls.__name__)
        torch.testing.assert_close(S2, cov, rtol=1e-7, atol=1e-7 * cond, msg=cls.__name__)
        eta = p.to_expectation(*xi)
        torch.testing.assert_close(p.from_expectation(*eta)[0], xi[0], rtol=1e-7, atol=1e-7 * cond)


@pytest.mark.parametrize("cls", [MeanCholesky, NaturalTril], ids=lambda c: c.__name__)
def test_triangular_factors_are_lower_with_positive_diagonal(cls):
    _, F = cls().from_meancov(*random_meancov((2,), 4))
    assert torch.equal(F, F.tril())
    assert bool((F.diagonal(dim1=-2, dim2=-1) > 0).all())


def test_natural_tril_factorises_the_precision():
    m, S = random_meancov((), 4)
    theta1, T = NaturalTril().from_meancov(m, S)
    torch.testing.assert_close(T.mT @ T, torch.linalg.inv(S), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_from_prior_keeps_dtype(cls):
    p = cls()
    M = 3
    cov = torch.ones(M) if p.diagonal else torch.eye(M)
    xi = p.from_prior(torch.zeros(M), cov)
    assert all(x.dtype == torch.float32 for x in xi)


def test_user_subclass_without_maps_says_what_to_define():
    class Half(Parameterization):
        pass

    with pytest.raises(NotImplementedError, match="must define from_natural"):
        Half().from_prior(torch.zeros(2), torch.eye(2))


def test_non_pd_covariance_is_named():
    with pytest.raises(ValueError, match="cov is not positive definite"):
        MeanCholesky().from_prior(torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="covariance is not positive definite"):
        Natural().from_prior(torch.zeros(2), -torch.eye(2))


def test_nan_mean_is_named():
    with pytest.raises(ValueError, match="mean contains NaN"):
        Natural().from_prior(torch.tensor([0.0, float("nan")]), torch.eye(2))


def test_mismatched_shapes_are_named():
    with pytest.raises(ValueError, match="shape mismatch: mean has shape"):
        Natural().from_prior(torch.zeros(3), torch.eye(2))
    with pytest.raises(ValueError, match="mean has shape"):
        MeanCholesky().from_prior(torch.zeros(3), torch.eye(2))


def test_non_positive_diagonal_variance_is_named():
    from natvi.parameterizations import DiagMeanLogScale

    with pytest.raises(ValueError, match="variance must be positive"):
        DiagMeanLogScale().from_prior(torch.zeros(2), torch.tensor([1.0, 0.0]))


def test_singular_scale_tril_is_named():
    with pytest.raises(ValueError, match="scale_tril has a zero on its diagonal"):
        MeanCholesky().to_natural(torch.zeros(2), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
