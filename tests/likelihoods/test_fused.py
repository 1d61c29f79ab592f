"""The fused Gauss–Hermite expectation against autodiff of the same quadrature (float64)."""

from __future__ import annotations

import pytest
import torch

from natvi.likelihoods import Bernoulli, Likelihood, StudentT
from natvi.likelihoods.base import gauss_hermite


def _inputs(N=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    f_mean = 3.0 * torch.randn(N, generator=g, dtype=torch.float64)
    f_var = torch.rand(N, generator=g, dtype=torch.float64) * 4.0 + 1e-3
    y = (torch.rand(N, generator=g, dtype=torch.float64) > 0.4).to(torch.float64)
    return f_mean.requires_grad_(), f_var.requires_grad_(), y


def _assert_same_values_and_gradients(fused, ref, inputs, g_out, grad_atol):
    """A fused expectation against its autodiff reference: values to 1e-13, gradients (for the
    upstream gradient ``g_out``) to rtol 1e-11 and ``grad_atol``."""
    torch.testing.assert_close(fused, ref, rtol=1e-13, atol=1e-13)
    got = torch.autograd.grad(fused, inputs, g_out)
    want = torch.autograd.grad(ref, inputs, g_out)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=grad_atol)


@pytest.mark.parametrize("link", ["probit", "logit"])
def test_fused_values_and_gradients_equal_autodiff_of_the_quadrature(link):
    lik = Bernoulli(link=link)
    assert lik.analytic_derivatives
    f_mean, f_var, y = _inputs()
    g_out = torch.randn(f_mean.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _assert_same_values_and_gradients(
        lik.variational_expectations(f_mean, f_var, y),
        lik.quadrature_expectations(f_mean, f_var, y), (f_mean, f_var), g_out, grad_atol=1e-12)


@pytest.mark.parametrize("link", ["probit", "logit"])
def test_analytic_derivatives_match_autodiff_of_log_prob(link):
    lik = Bernoulli(link=link)
    # (beyond |t| = 20 torch's softplus is linear, so autodiff of the logit is the inexact one)
    F = torch.linspace(-30 if link == "probit" else -19.5, 12, 301,
                       dtype=torch.float64).requires_grad_()
    for label in (0.0, 1.0):
        y = torch.full_like(F, label)
        lp, d1, d2 = lik.log_prob_derivatives(F, y, second=True)
        (g,) = torch.autograd.grad(lik.log_prob(F, y).sum(), F, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), F)
        torch.testing.assert_close(lp, lik.log_prob(F, y), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(d1, g, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(d2, h, rtol=1e-7, atol=1e-10)


def test_zero_variance_gradient_is_the_limit_half_the_second_derivative():
    lik = Bernoulli()
    f_mean = torch.tensor([-1.0, 0.3, 2.0], dtype=torch.float64, requires_grad=True)
    f_var = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    lik.variational_expectations(f_mean, f_var, y).sum().backward()
    _, d1, d2 = lik.log_prob_derivatives(f_mean.detach(), y, second=True)
    torch.testing.assert_close(f_var.grad, 0.5 * d2, rtol=1e-13, atol=0)
    torch.testing.assert_close(f_mean.grad, d1, rtol=1e-13, atol=0)
    # ... and the limit of the positive-variance gradient
    eps = torch.full((3,), 1e-10, dtype=torch.float64, requires_grad=True)
    lik.variational_expectations(f_mean.detach(), eps, y).sum().backward()
    torch.testing.assert_close(eps.grad, 0.5 * d2, rtol=1e-6, atol=0)


def test_a_subclass_overriding_only_log_prob_falls_back_to_autodiff():
    class Shifted(Bernoulli):
        def log_prob(self, F, y):
            return super().log_prob(F + 1.0, y)

    lik = Shifted()
    assert not lik.analytic_derivatives
    assert not StudentT().analytic_derivatives and not Likelihood().analytic_derivatives
    f_mean, f_var, y = _inputs()
    torch.testing.assert_close(lik.variational_expectations(f_mean, f_var, y),
                               Bernoulli().quadrature_expectations(f_mean + 1.0, f_var, y))


def test_gauss_hermite_grids_are_cached_per_dtype():
    a = gauss_hermite(20, dtype=torch.float64)
    assert gauss_hermite(20, dtype=torch.float64)[0] is a[0]
    assert gauss_hermite(20, dtype=torch.float32)[0].dtype == torch.float32


def test_log_ndtr_equals_torchs_everywhere_and_differentiates_through_the_tail():
    from natvi.likelihoods.discrete import log_ndtr

    t = torch.linspace(-60, 40, 2001, dtype=torch.float64).requires_grad_()
    ours, ref = log_ndtr(t), torch.special.log_ndtr(t)
    torch.testing.assert_close(ours, ref, rtol=1e-14, atol=1e-15)
    (g,) = torch.autograd.grad(ours.sum(), t)
    (g_ref,) = torch.autograd.grad(ref.sum(), t)
    assert bool(torch.isfinite(g).all())
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-14)


class _ScaledLogit(Bernoulli):
    """A user likelihood with a trainable parameter and analytic ∂_f: p(y | f) = σ(s · a f)."""

    def __init__(self):
        super().__init__(link="logit")
        self.a = torch.nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

    def log_prob(self, F, y):
        return super().log_prob(self.a * F, y)

    def log_prob_derivatives(self, F, y, second=False):
        out = super().log_prob_derivatives(self.a * F, y, second)
        return (out[0], *(d * self.a ** (k + 1) for k, d in enumerate(out[1:])))


def test_a_likelihood_with_trainable_parameters_keeps_autodiff_so_they_get_gradients():
    lik = _ScaledLogit()
    assert not lik.analytic_derivatives  # the fused backward would drop ∂/∂a
    f_mean, f_var, y = _inputs()
    value = lik.variational_expectations(f_mean, f_var, y).sum()
    (grad_a,) = torch.autograd.grad(value, lik.a)
    with torch.no_grad():
        lik.a.requires_grad_(False)
        assert lik.analytic_derivatives  # frozen: the fused path is exact again
        lik.a.requires_grad_(True)
    ref = lik.quadrature_expectations(f_mean, f_var, y).sum()
    torch.testing.assert_close(grad_a, torch.autograd.grad(ref, lik.a)[0], rtol=1e-12, atol=0)
    assert float(grad_a) != 0.0


def test_log_ndtr_in_float32_matches_torchs_across_the_tail_switch():
    from natvi.likelihoods.discrete import log_ndtr

    t = torch.linspace(-40, 10, 1001, dtype=torch.float32)
    torch.testing.assert_close(log_ndtr(t), torch.special.log_ndtr(t), rtol=2e-6, atol=1e-7)


def test_ndtr_keeps_its_relative_accuracy_in_the_lower_tail():
    # torch.special.ndtr is off by 4 % at t = -8 and returns 0 below -8.3, so predict_proba of a
    # confident probit classifier (and its log-loss) was wrong in the tail; scipy's ndtr is the
    # independent reference.
    from scipy.special import ndtr as scipy_ndtr

    from natvi.likelihoods import Bernoulli
    from natvi.likelihoods.discrete import ndtr

    t = torch.linspace(-37.0, 8.0, 4501, dtype=torch.float64)
    ref = torch.as_tensor(scipy_ndtr(t.numpy()))
    torch.testing.assert_close(ndtr(t), ref, rtol=1e-12, atol=0.0)
    mean, var = torch.tensor([-12.0, -3.0, 0.5]), torch.tensor([3.0, 0.5, 0.1])
    mean, var = mean.double(), var.double()
    p, _ = Bernoulli().predict_mean_and_var(mean, var)
    ref = torch.as_tensor(scipy_ndtr((mean / (1 + var).sqrt()).numpy()))
    torch.testing.assert_close(p, ref, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("shift", [0.0, -40.0])
def test_probit_grid_sums_equal_the_generic_reductions_also_past_the_tail_switch(shift):
    # shift = -40: grid points reach t < -26, where the probit path hands over to the generic one
    lik = Bernoulli()
    f_mean, f_var, y = _inputs(N=60, seed=3)
    f_mean = f_mean.detach() + shift
    sd = f_var.detach().sqrt()
    z, w = gauss_hermite(lik.num_gh, 1, dtype=torch.float64)
    z = z.squeeze(-1)
    wz = torch.stack([w, w * z])
    got = lik._gauss_hermite_sums(f_mean, sd, y, z, w, wz, True)
    want = Likelihood._gauss_hermite_sums(lik, f_mean, sd, y, z, w, wz, True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    value, none1, none2 = lik._gauss_hermite_sums(f_mean, sd, y, z, w, wz, False)
    assert none1 is None and none2 is None
    torch.testing.assert_close(value, want[0], rtol=1e-12, atol=1e-12)


def test_fused_probit_in_float32_follows_the_float64_reference():
    lik = Bernoulli()
    f_mean, f_var, y = _inputs(N=50, seed=4)
    ref = lik.variational_expectations(f_mean, f_var, y)
    g_ref = torch.autograd.grad(ref.sum(), (f_mean, f_var))
    m32, v32 = (t.detach().float().requires_grad_() for t in (f_mean, f_var))
    got = lik.variational_expectations(m32, v32, y.float())
    g_got = torch.autograd.grad(got.sum(), (m32, v32))
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-4, atol=1e-4)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


def _softmax_inputs(N=80, C=3, seed=5):
    g = torch.Generator().manual_seed(seed)
    f_mean = 2.0 * torch.randn(N, C, generator=g, dtype=torch.float64)
    f_var = torch.rand(N, C, generator=g, dtype=torch.float64) * 3.0 + 1e-3
    y = torch.randint(0, C, (N,), generator=g).to(torch.float64)
    return f_mean.requires_grad_(), f_var.requires_grad_(), y


def test_fused_softmax_monte_carlo_equals_autodiff_of_the_same_draws():
    from natvi.likelihoods import Softmax

    lik = Softmax(3, num_samples=40)
    f_mean, f_var, y = _softmax_inputs()
    g_out = torch.randn(80, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _assert_same_values_and_gradients(
        lik.variational_expectations(f_mean, f_var, y),
        lik.monte_carlo_expectations(f_mean, f_var, y), (f_mean, f_var), g_out, grad_atol=1e-13)


def test_fused_softmax_at_zero_variance_takes_the_limit():
    from natvi.likelihoods import Softmax

    lik = Softmax(3, num_samples=40)
    f_mean, f_var, y = _softmax_inputs(N=10)
    f_var = f_var.detach().clone()
    f_var[:, 1] = 0.0
    f_var.requires_grad_()
    (g_var,) = torch.autograd.grad(lik.variational_expectations(f_mean, f_var, y).sum(), f_var)
    p = torch.softmax(f_mean.detach(), -1)[:, 1]
    torch.testing.assert_close(g_var[:, 1], -0.5 * p * (1 - p), rtol=1e-12, atol=1e-14)
    assert bool(torch.isfinite(g_var).all())


def test_seeded_softmax_draws_are_made_once_and_equal_a_fresh_generator():
    from natvi.likelihoods import Softmax

    lik = Softmax(3, num_samples=7, seed=11)
    like = torch.zeros((), dtype=torch.float64)
    a = lik._draws(7, (5, 3), like)
    assert lik._draws(7, (5, 3), like) is a  # kept
    eps = torch.randn(7, 5, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    assert torch.equal(a, torch.cat([eps, -eps]))
    unseeded = Softmax(3, num_samples=7, seed=None)
    assert not torch.equal(unseeded._draws(7, (5, 3), like), unseeded._draws(7, (5, 3), like))


def test_fused_expectation_takes_no_derivatives_under_no_grad(monkeypatch):
    import natvi.likelihoods.base as base

    f_mean, f_var, y = _inputs()
    f_mean.requires_grad_(True)
    lik = Bernoulli()
    with_grad = lik.variational_expectations(f_mean, f_var, y)
    calls = []
    real = base.variance_gradient
    monkeypatch.setattr(base, "variance_gradient", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        value = lik.variational_expectations(f_mean, f_var, y)
    assert not calls and value.grad_fn is None
    torch.testing.assert_close(value, with_grad.detach(), rtol=0.0, atol=0.0)
    lik.variational_expectations(f_mean, f_var, y).sum().backward()
    assert calls and f_mean.grad is not None


@pytest.mark.parametrize("name", ["bernoulli", "poisson", "gaussian"])
def test_expectation_terms_are_the_expectation_and_its_autodiff_derivatives(name):
    from natvi.likelihoods import Gaussian, Poisson

    f_mean, f_var, y = _inputs()
    f_mean, f_var = f_mean.detach(), f_var.detach()
    if name == "poisson":
        lik, y = Poisson(), torch.round(3.0 * y + 1.0)
    elif name == "gaussian":
        lik = Gaussian(noise=0.3)
        lik.raw_noise.requires_grad_(False)
    else:
        lik = Bernoulli()
    assert lik.has_expectation_terms
    value, g_mean, g_var = lik.expectation_terms(f_mean, f_var, y, True)
    mu, v = f_mean.clone().requires_grad_(), f_var.clone().requires_grad_()
    # the reference: autodiff of the closed form, or of the generic quadrature for Bernoulli
    ref = (lik.quadrature_expectations(mu, v, y) if name == "bernoulli"
           else type(lik)._variational_expectations(lik, mu, v, y))
    d_mu, d_v = torch.autograd.grad(ref.sum(), (mu, v))
    torch.testing.assert_close(value, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_mean, d_mu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_var, d_v, rtol=1e-10, atol=1e-12)


def test_expectation_terms_need_the_expectation_from_the_same_class():
    from natvi.likelihoods import Gaussian, Poisson

    class OnlyExpectation(Poisson):
        def _variational_expectations(self, f_mean, f_var, y):
            return super()._variational_expectations(f_mean, f_var, y)

    class OnlyTerms(Poisson):
        def expectation_terms(self, f_mean, f_var, y, grad):
            return super().expectation_terms(f_mean, f_var, y, grad)

    assert Poisson().has_expectation_terms
    assert not OnlyExpectation().has_expectation_terms
    assert not OnlyTerms().has_expectation_terms
    assert not Gaussian().has_expectation_terms  # (a learnable noise)
    with torch.no_grad():
        assert Gaussian().has_expectation_terms
