"""natvi.fit consults its strategy (and nothing of torch.distributed); the model protocol."""

from __future__ import annotations

import gpytorch
import pytest
import torch

import natvi
from natvi.gp import SVGP, VGP
from natvi.likelihoods import Bernoulli
from natvi.strategy import Local, Strategy, current, use


def _problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 2, generator=g, dtype=torch.float64)
    y = (X[:, 0] > 0).to(torch.float64)
    model = SVGP(kernel=gpytorch.kernels.RBFKernel(), likelihood=Bernoulli(),
                 inducing_points=X[:4].clone()).double()
    return model, X, y


class Recording(Strategy):
    """One process pretending to be one of two identical ranks: every reduction doubles."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def prepare(self, model, X, y, *, batch_size=None, checkpoint=None):
        self.calls.append("prepare")
        return X, y

    def reduce(self, value, params=()):
        self.calls.append("reduce")
        for p in params:
            if p.grad is not None:
                p.grad = 2 * p.grad
        return 2 * value

    def agree(self, stop):
        self.calls.append("agree")
        return True

    def finish(self, model):
        self.calls.append("finish")


def test_fit_takes_its_data_view_values_gradients_and_stopping_from_the_strategy():
    model, X, y = _problem()
    reference, _, _ = _problem()
    strategy = Recording()
    result = natvi.fit(model, X, y, iterations=5, progress=False, strategy=strategy,
                       stop_when=lambda history: False)
    # the first iteration's ELBO is twice the model's; the run stops where the strategy says
    assert result.history.elbo[0] == pytest.approx(2 * float(reference.elbo(X, y)), rel=1e-12)
    assert strategy.calls == ["prepare", "reduce", "agree", "finish"]
    assert result.stopped_early


def test_use_sets_the_strategy_of_calls_given_none_and_restores_it():
    model, X, y = _problem()
    strategy = Recording()
    assert isinstance(current(), Local)
    with use(strategy):
        natvi.fit(model, X, y, iterations=2, progress=False)
    assert isinstance(current(), Local)
    assert strategy.calls.count("reduce") == 2
    with pytest.raises(ValueError, match="natvi.strategy.Strategy"):
        with use("gloo"):
            pass


def test_deprecated_distributed_false_is_the_local_strategy():
    model, X, y = _problem()
    same, _, _ = _problem()
    with pytest.warns(DeprecationWarning, match="strategy=natvi.distributed.DataParallel"):
        old = natvi.fit(model, X, y, iterations=3, progress=False, distributed=False)
    new = natvi.fit(same, X, y, iterations=3, progress=False)
    assert old.history.elbo == new.history.elbo
    with pytest.raises(ValueError, match="not both"), pytest.warns(DeprecationWarning):
        natvi.fit(model, X, y, progress=False, distributed=False, strategy=Local())


def test_deprecated_ambient_reports_the_data_parallel_settings():
    with pytest.warns(DeprecationWarning, match="ambient"):
        assert natvi.distributed.ambient() is None
    with natvi.distributed.data_parallel(shard_data=True):
        with pytest.warns(DeprecationWarning):
            settings = natvi.distributed.ambient()
    assert settings == {"shard_data": True, "broadcast": True, "check_every": 10}


def test_models_declare_the_protocol_and_whether_they_need_the_full_batch():
    model, X, y = _problem()
    vgp = VGP(X, kernel=gpytorch.kernels.RBFKernel(), likelihood=Bernoulli())
    assert isinstance(model, natvi.VariationalModel) and isinstance(vgp, natvi.VariationalModel)
    assert not model.needs_full_batch and vgp.needs_full_batch
    with pytest.raises(ValueError, match=r"must define elbo\(\)"):
        natvi.fit(torch.nn.Linear(2, 1), X, y, progress=False)
