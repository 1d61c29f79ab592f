"""natvi.pyro.NaturalSVI from Pyro's defaults: one particle, each of Pyro's ELBOs, the default
decaying step, the paired loss check, counted back-offs and skips, AutoGuideList."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoGuideList, AutoMultivariateNormal, AutoNormal

from models import bayesian_regression
from natvi.optim import SafeguardWarning
from natvi.pyro import NaturalSVI
from natvi.pyro.svi import default_schedule

DT = torch.float64


@pytest.fixture(autouse=True)
def _fresh_pyro(one_thread):
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(DT)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
    torch.set_default_dtype(dtype)


@pytest.fixture(scope="module")
def problem():
    return bayesian_regression.build()


@pytest.fixture(scope="module")
def bound(problem):
    return _neg_log_evidence(problem)


def _neg_log_evidence(problem, n=64):
    """``−log p(y)`` by a Riemann sum over a (a, b, sigma) grid of ±9 posterior sds (brute force).

    A lower bound of every −ELBO; for this near-Gaussian posterior the best Gaussian q is within
    a few hundredths of it."""
    x, y = problem.x, problem.y
    N = len(y)
    X = torch.stack([torch.ones_like(x), x], -1)
    coef = torch.linalg.lstsq(X, y.unsqueeze(-1)).solution.squeeze(-1)
    s = float((y - X @ coef).std())
    a = torch.linspace(float(coef[0]) - 9 * s / N**0.5, float(coef[0]) + 9 * s / N**0.5, n)
    b = torch.linspace(float(coef[1]) - 9 * s / N**0.5, float(coef[1]) + 9 * s / N**0.5, n)
    sig = torch.linspace(s * (1 - 9 / (2 * N) ** 0.5), s * (1 + 9 / (2 * N) ** 0.5), n)
    cell = (a[1] - a[0]) * (b[1] - b[0]) * (sig[1] - sig[0])
    A, B = torch.meshgrid(a, b, indexing="ij")
    resid = y - A.unsqueeze(-1) - B.unsqueeze(-1) * x  # [n, n, N]
    ss = (resid**2).sum(-1)  # [n, n]
    log_sig = sig.log()
    loglik = (-0.5 * N * math.log(2 * math.pi) - N * log_sig[:, None, None]
              - 0.5 * ss / sig[:, None, None] ** 2)
    logprior = (torch.distributions.Normal(0.0, 10.0).log_prob(A)
                + torch.distributions.Normal(0.0, 1.0).log_prob(B) - math.log(10.0))
    return -float(torch.logsumexp((loglik + logprior).reshape(-1), 0) + cell.log())


def _accurate_neg_elbo(problem, guide, particles=4000):
    state = pyro.util.get_rng_state()
    pyro.set_rng_seed(123)
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        value = float(elbo.loss(problem.model, guide, problem.x, problem.y))
    pyro.util.set_rng_state(state)
    return value


@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceMeanField_ELBO, JitTrace_ELBO],
                         ids=lambda e: e.__name__)
def test_defaults_with_one_particle_reach_one_percent_of_the_evidence_bound(problem, bound, elbo):
    guide = AutoMultivariateNormal(problem.model)
    svi = NaturalSVI(problem.model, guide, loss=elbo())
    for _ in range(100):
        svi.step(problem.x, problem.y)
    final = _accurate_neg_elbo(problem, guide)
    assert bound - 0.05 < final <= bound + 0.01 * abs(bound), (final, bound)
    assert svi.num_skipped <= 15


def test_default_schedule_decays_like_robbins_monro_and_adapts_to_the_dimension():
    s = default_schedule(3)
    assert s(0) == pytest.approx(1 / 3) and s(20) == pytest.approx(1 / 6)
    big = default_schedule(31)
    assert big(0) == pytest.approx(1 / 31) and big(93) == pytest.approx(0.5 / 31)


def test_a_large_constant_step_is_backed_off_counted_and_warned_not_diverged(problem):
    guide = AutoMultivariateNormal(problem.model)
    svi = NaturalSVI(problem.model, guide, lr=1.0)
    start = _accurate_neg_elbo(problem, guide, particles=500)
    with pytest.warns(SafeguardWarning, match="back-offs so far"):
        for _ in range(40):
            assert math.isfinite(svi.step(problem.x, problem.y))
    assert svi.num_backoffs > 0
    assert svi.num_backoffs == sum(r.kind == "backoff" for r in svi.step_records)
    assert _accurate_neg_elbo(problem, guide, particles=500) < start - 100


def test_a_step_with_non_finite_gradients_is_skipped_counted_and_leaves_q_unchanged(problem):
    guide = AutoMultivariateNormal(problem.model)

    def nan_loss(model, guide_, x, y):
        loss = Trace_ELBO().differentiable_loss(model, guide_, x, y)
        return loss + 0.0 * guide_.loc.sum() * float("nan")

    svi = NaturalSVI(problem.model, guide, loss=nan_loss)
    guide(problem.x, problem.y)
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    with pytest.warns(SafeguardWarning, match="skipped steps so far"):
        svi.step(problem.x, problem.y)
    assert svi.num_skipped == 1 and svi.last_records[0].reason == "nonfinite_gradient"
    for k, v in pyro.get_param_store().items():
        assert torch.equal(v.detach(), before[k])


def test_auto_guide_list_of_gaussian_parts_is_updated_part_by_part(problem):
    model = problem.model
    guide = AutoGuideList(model)
    guide.append(AutoMultivariateNormal(pyro.poutine.block(model, expose=["a", "b"])))
    guide.append(AutoNormal(pyro.poutine.block(model, expose=["sigma"])))
    svi = NaturalSVI(model, guide)
    start = _accurate_neg_elbo(problem, guide, particles=500)
    for _ in range(60):
        svi.step(problem.x, problem.y)
    assert len(svi.last_records) == 2
    assert _accurate_neg_elbo(problem, guide, particles=500) < start - 100


def test_step_returns_the_loss_and_records_one_step_per_block(problem):
    guide = AutoMultivariateNormal(problem.model)
    svi = NaturalSVI(problem.model, guide)
    losses = [svi.step(problem.x, problem.y) for _ in range(3)]
    assert all(isinstance(v, float) for v in losses)
    assert [r.step for r in svi.step_records] == [0, 1, 2]
    with pytest.warns(DeprecationWarning, match="last_records"):
        assert svi.last_report.step == 2
