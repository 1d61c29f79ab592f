"""natvi's one likelihood vocabulary: every likelihood has a name, names round-trip, target
checks live on the likelihood (one Poisson count check for the estimators, the CLI and
``check_y``), and the estimators and ``models/`` speak the same names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from natvi import likelihoods
from natvi.likelihoods import Likelihood, by_name, check_targets, name_of, names
from natvi.likelihoods.registry import entry, trainable_names
from tests.likelihoods.test_likelihoods import _subclasses

_PARAMS = {"softmax": {"num_classes": 3}, "robustmax": {"num_classes": 3}}


def test_every_public_likelihood_has_exactly_one_name():
    public = {c for c in _subclasses(Likelihood) if not c.__name__.startswith("_")
              and c.__module__.startswith("natvi.")}
    assert {entry(n).cls for n in names()} == public
    assert len(set(names())) == len(names())


@pytest.mark.parametrize("name", names())
def test_by_name_and_name_of_round_trip(name):
    lik = by_name(name, **_PARAMS.get(name, {}))
    assert isinstance(lik, entry(name).cls)
    assert name_of(lik) == name_of(type(lik)) == name


def test_unknown_names_are_value_errors_listing_the_names():
    with pytest.raises(ValueError, match="unknown likelihood 'cauchy'; choose one of bernoulli"):
        by_name("cauchy")
    with pytest.raises(ValueError, match="not in natvi's likelihood vocabulary"):
        name_of(torch.nn.Module)


def test_estimators_train_exactly_the_trainable_names():
    from natvi.estimators import make_estimator

    assert set(trainable_names()) == {
        "bernoulli", "softmax", "robustmax", "gaussian", "studentt", "poisson"}
    for name in trainable_names():
        est = make_estimator(name, num_inducing=3)
        assert type(est).__name__ == entry(name).estimator
    assert make_estimator("robustmax").multiclass == "robustmax"
    assert make_estimator("studentt").likelihood == "studentt"
    with pytest.raises(ValueError, match="no estimator trains the gamma likelihood"):
        make_estimator("gamma")


@pytest.mark.parametrize("bad", [[0, 1, -1, 2], [0, 1, 0.5, 2]])
def test_the_poisson_count_check_is_one_check_everywhere(bad):
    from natvi._data import DataError, Table, check_target
    from natvi.estimators import SparseGPCountRegressor

    expected = f"holds {[v for v in bad if v < 0 or v != int(v)][0]:g}, but the Poisson " \
               "likelihood takes non-negative integer counts"
    with pytest.raises(ValueError, match=expected):
        check_targets("poisson", bad)
    with pytest.raises(ValueError, match=expected):
        likelihoods.Poisson().check_y(torch.tensor(bad, dtype=torch.float64))
    with pytest.raises(ValueError, match=expected + ".*SparseGPRegressor"):
        SparseGPCountRegressor(num_inducing=2, max_iter=1).fit(np.arange(4.0)[:, None], bad)
    table = Table(path="c.csv", columns={"y": [str(v) for v in bad], "x": ["1"] * 4})
    match = "c.csv: target 'y' " + expected + ".*--likelihood gaussian"
    with pytest.raises(DataError, match=match):
        check_target(table, "y", "poisson")


def test_class_label_checks_count_the_classes():
    assert list(check_targets("bernoulli", ["no", "yes", "no"])) == ["no", "yes", "no"]
    with pytest.raises(ValueError, match="3 classes but the bernoulli likelihood takes two"):
        check_targets("bernoulli", [0, 1, 2])
    for name in ("bernoulli", "softmax", "robustmax"):
        with pytest.raises(ValueError, match="single class .*only one class"):
            check_targets(name, ["a", "a"])


def test_real_valued_checks():
    np.testing.assert_array_equal(check_targets("gaussian", [1, 2.5]), [1.0, 2.5])
    with pytest.raises(ValueError, match="not numeric \\(it holds 'a'\\)"):
        check_targets("gaussian", ["a", "1"])
    with pytest.raises(ValueError, match="non-finite"):
        check_targets("studentt", [1.0, np.nan])
    with pytest.raises(ValueError, match="strictly positive"):
        check_targets("gamma", [0.0, 1.0])
    with pytest.raises(ValueError, match="strictly inside \\(0, 1\\)"):
        check_targets("beta", [0.5, 1.0])


def test_models_record_the_vocabulary_name_of_their_likelihood():
    from models import breast_cancer, digits_softmax, poisson_counts

    for module, name in [(breast_cancer, "bernoulli"), (digits_softmax, "softmax"),
                         (poisson_counts, "poisson")]:
        problem = module.build(num_inducing=5)
        assert problem.likelihood == name == name_of(problem.model.likelihood)
        assert (problem.y.dtype == torch.long) == (entry(name).task == "multiclass")


def test_softmax_predict_proba_is_per_row_and_matches_a_brute_force_average():
    lik = likelihoods.Softmax(num_classes=3).double()
    gen = torch.Generator().manual_seed(1)
    mean = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    var = torch.rand(6, 3, generator=gen, dtype=torch.float64)
    p = lik.predict_proba(mean, var)
    assert torch.allclose(p.sum(-1), torch.ones(6, dtype=torch.float64))
    for i in range(6):  # one row alone gets its row of the batch (up to summation order)
        torch.testing.assert_close(lik.predict_proba(mean[i:i + 1], var[i:i + 1])[0], p[i],
                                   rtol=1e-14, atol=0)
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(500, 1, 3, generator=g, dtype=torch.float64)
    eps = torch.cat([eps, -eps])
    ref = torch.softmax(mean + var.sqrt() * eps, -1).mean(0)
    assert torch.equal(p, ref)  # the draws the classifier used before (seed 0, 500 pairs)


def test_the_regressors_share_one_constructor_and_check_their_likelihood():
    from natvi.estimators import SparseGPCountRegressor, SparseGPRegressor

    assert SparseGPRegressor.__init__ is SparseGPCountRegressor.__init__
    assert SparseGPRegressor()._likelihood_name() == "gaussian"
    assert SparseGPCountRegressor()._likelihood_name() == "poisson"
    X, y = np.arange(4.0)[:, None], np.array([0.0, 1.0, 3.0, 2.0])
    with pytest.raises(ValueError, match=r"likelihood must be one of \['poisson'\]"):
        SparseGPCountRegressor(likelihood="gaussian").fit(X, y)
    with pytest.raises(ValueError, match=r"one of \['gaussian', 'studentt'\]"):
        SparseGPRegressor(likelihood="poisson").fit(X, y)
