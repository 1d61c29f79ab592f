"""Step-size schedules: values, validation, and how the optimiser consumes them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from natvi.optim import Constant, LogLinearWarmup, NaturalGradient
from natvi.optim.schedules import as_schedule, check_lr, evaluate
from tests.optim.toy_models import BayesLinReg, regression_data


def test_log_linear_warmup_matches_the_closed_form_and_then_stays_flat():
    s = LogLinearWarmup(gamma0=1e-4, gamma1=1e-1, K=5)
    for t in range(10):
        expected = 1e-4 * (1e-1 / 1e-4) ** min(t / 5, 1.0)
        assert math.isclose(s(t), expected, rel_tol=1e-12)
    assert s(0) == pytest.approx(1e-4) and s(5) == pytest.approx(1e-1) and s(50) == s(5)
    assert all(s(t) < s(t + 1) for t in range(5))


def test_constant_and_as_schedule():
    assert Constant(0.3)(0) == Constant(0.3)(100) == 0.3
    assert isinstance(as_schedule(2.0), Constant)
    fn = lambda t: 1.0 / (1 + t)
    assert as_schedule(fn) is fn


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "fast"])
def test_bad_learning_rates_raise_value_error_naming_the_argument(bad):
    with pytest.raises(ValueError, match="lr"):
        as_schedule(bad)


@pytest.mark.parametrize(
    "kwargs", [{"gamma0": 0.0}, {"gamma1": -1.0}, {"K": 0}, {"K": 2.5}, {"K": True}]
)
def test_warmup_validation(kwargs):
    with pytest.raises(ValueError):
        LogLinearWarmup(**kwargs)


def test_a_schedule_returning_a_bad_value_is_reported_with_the_step():
    with pytest.raises(ValueError, match="step 3"):
        evaluate(lambda t: 1.0 - t / 3, 3)


def test_optimizer_evaluates_the_schedule_at_its_own_step_count():
    X, y = regression_data()
    model = BayesLinReg(3)
    seen = []
    opt = NaturalGradient.for_model(model, lr=lambda t: seen.append(t) or 0.1 * (t + 1))
    for _ in range(4):
        opt.zero_grad()
        (-model.elbo(X, y)).backward()
        opt.step()
        assert [r.lr for r in opt.last_records] == [pytest.approx(0.1 * len(seen))]
    assert seen == [0, 1, 2, 3]


def test_decay_is_a_over_one_plus_b_t_and_validates():
    from natvi.optim import Decay

    s = Decay(0.5, 2.0)
    assert [s(t) for t in range(3)] == [0.5, 0.5 / 3, 0.5 / 5]
    assert Decay(0.3)(100) == 0.3
    with pytest.raises(ValueError, match="decay rate"):
        Decay(1.0, -1.0)
    with pytest.raises(ValueError, match="a must be"):
        Decay(0.0)


def _optimizers(lr) -> dict:
    """Build every natvi optimiser with step size ``lr`` (lazily: one callable each)."""
    import pyro
    from pyro.infer.autoguide import AutoMultivariateNormal

    import natvi
    from natvi.expfam import Gamma
    from natvi.optim import DSNGD, NGD, SNGD, MirrorDescent
    from natvi.pyro import NaturalSVI

    def beta_W():
        return [torch.zeros(2, requires_grad=True), torch.zeros(2, 3, requires_grad=True)]

    def svi():
        def model():
            pyro.sample("z", pyro.distributions.Normal(torch.zeros(2), 1.0).to_event(1))

        return NaturalSVI(model, AutoMultivariateNormal(model), lr=lr)

    X, y = regression_data()
    return {
        "NaturalGradient": lambda: NaturalGradient.for_model(BayesLinReg(3), lr=lr),
        "MirrorDescent": lambda: MirrorDescent(
            [torch.zeros((), requires_grad=True), torch.tensor(-1.0, requires_grad=True)],
            family=Gamma(), lr=lr),
        "DSNGD": lambda: DSNGD(beta_W(), n_classes=3, cardinalities=(3, 2), lr=lr),
        "SNGD": lambda: SNGD(beta_W(), n_classes=3, cardinalities=(3, 2), lr=lr),
        "NGD": lambda: NGD(torch.nn.Linear(2, 3), lr=lr),
        "NaturalSVI": svi,
        "fit(lr)": lambda: natvi.fit(BayesLinReg(3), X, y, iterations=0, lr=lr, progress=False),
        "fit(hyper_lr)": lambda: natvi.fit(BayesLinReg(3), X, y, iterations=0, hyper_lr=lr,
                                           progress=False),
        "LogLinearWarmup": lambda: LogLinearWarmup(gamma0=lr, gamma1=lr),
    }


BAD_TYPES = ["1.0", True, np.bool_(True), 1 + 0j, torch.ones(2), torch.tensor(True), [1.0]]


@pytest.mark.parametrize("bad", BAD_TYPES, ids=repr)
def test_every_optimiser_refuses_a_step_size_that_is_not_a_real_number(bad):
    for name, build in _optimizers(bad).items():
        with pytest.raises(ValueError, match="must be a real number > 0") as info:
            build()
        assert "got" in str(info.value) and type(bad).__name__ in str(info.value), name


@pytest.mark.parametrize("good", [1, 0.5, np.float64(0.5), np.float32(0.5), torch.tensor(0.5),
                                  torch.tensor([0.5], dtype=torch.float64)], ids=repr)
def test_real_numbers_and_one_element_tensors_are_step_sizes(good):
    assert check_lr("lr", good) == float(good) and type(check_lr("lr", good)) is float
    for build in _optimizers(good).values():
        build()
