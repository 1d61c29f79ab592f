"""scikit-learn estimators: the breast-cancer acceptance test, sklearn conventions and checks,
labels, regression and counts against known truths, saving and loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.metrics import log_loss
from sklearn.model_selection import cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import natvi
from natvi.estimators import (
    SparseGPClassifier,
    SparseGPCountRegressor,
    SparseGPRegressor,
    kmeans_inducing_points,
    load,
)

TINY = {"num_inducing": 5, "max_iter": 3, "warmup_iter": 1, "natgrad_lr": 1.0, "random_state": 0}
# sklearn's checks assert fit quality (e.g. R² > 0.5 on their regression data): 3 iterations with
# 5 inducing points are too few for the hyperparameters to move there, 30 with 10 are enough.
CHECKS = {**TINY, "num_inducing": 10, "max_iter": 30}


@pytest.fixture(scope="module")
def breast_cancer_fit():
    X, y = load_breast_cancer(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    clf = SparseGPClassifier(random_state=0).fit(X_tr, y_tr)
    return clf, X_te, y_te


def test_breast_cancer_accuracy_at_least_095(breast_cancer_fit):
    clf, X_te, y_te = breast_cancer_fit
    assert clf.score(X_te, y_te) >= 0.95


@pytest.mark.xfail(
    reason="issue 5 acceptance line not met, and not a fault of the inference: on this split the "
    "exact posterior of the same fitted model (elliptical slice sampling over all 398 training "
    "latents, `python -m benchmarks calibration`) also loses to its plug-in, 0.1204 vs 0.1090, as "
    "natvi's 0.1187 vs 0.1074 does; trained to the ELBO plateau the gap shrinks to 0.1139 vs 0.1131 "
    "(exact 0.1122 vs 0.1102) but accuracy drops to 0.942. See benchmarks/README.md, calibration.",
    strict=True,
)
def test_breast_cancer_integrated_probabilities_beat_plug_in(breast_cancer_fit):
    clf, X_te, y_te = breast_cancer_fit
    integrated = log_loss(y_te, clf.predict_proba(X_te))
    plug_in = log_loss(y_te, norm.cdf(clf.predict_latent(X_te)[0]))  # Φ(μ), q(f) ignored
    assert integrated < plug_in


def test_predict_proba_is_the_probit_integral_over_q(breast_cancer_fit):
    clf, X_te, _ = breast_cancer_fit
    mean, var = clf.predict_latent(X_te[:20])
    expected = norm.cdf(mean / np.sqrt(1.0 + var))
    np.testing.assert_allclose(clf.predict_proba(X_te[:20])[:, 1], expected, rtol=1e-10)


def test_natural_gradient_training_stops_on_the_elbo_plateau(breast_cancer_fit):
    clf, _, _ = breast_cancer_fit
    elbo = np.asarray(clf.history_.elbo)
    assert clf.n_iter_ == len(elbo) <= clf.max_iter
    assert elbo[-1] > elbo[0]
    if clf.n_iter_ < clf.max_iter:  # stopped early: the rule's condition holds at the end
        w = clf.n_iter_no_change
        n_train = 398
        assert elbo[-1] - elbo[-1 - w] < clf.tol * n_train


def test_string_labels_and_multiclass_from_the_labels():
    X, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    clf = SparseGPClassifier(num_inducing=15, max_iter=60, random_state=0).fit(X, names)
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    assert clf.model_.num_latent == 3
    proba = clf.predict_proba(X)
    assert proba.shape == (150, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert set(clf.predict(X)) <= set(clf.classes_)
    assert clf.score(X, names) > 0.9


def test_binary_string_labels_use_one_latent():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = np.where(X[:, 0] > 0, "spam", "ham")
    clf = SparseGPClassifier(num_inducing=10, max_iter=40, random_state=0).fit(X, y)
    assert clf.model_.num_latent == 1
    assert list(clf.classes_) == ["ham", "spam"]
    assert clf.score(X, y) > 0.9


def test_works_in_a_pipeline_and_cross_val_score():
    X, y = load_breast_cancer(return_X_y=True)
    X, y = X[::4], y[::4]
    pipe = make_pipeline(StandardScaler(), SparseGPClassifier(num_inducing=10, max_iter=40,
                                                              random_state=0))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.85


def test_get_set_params_and_clone_keep_settings_only():
    clf = SparseGPClassifier(num_inducing=7, link="logit")
    assert clf.get_params()["num_inducing"] == 7
    clf.set_params(max_iter=3, method="adam")
    copy = clone(clf)
    assert copy.get_params() == clf.get_params()
    assert not hasattr(copy, "model_")


def test_regressor_recovers_a_smooth_function():
    rng = np.random.default_rng(1)
    X = rng.uniform(-3, 3, size=(200, 1))
    f = np.sin(2 * X[:, 0]) * 10 + 50  # units far from standard: y is standardised inside
    y = f + rng.normal(scale=1.0, size=200)
    reg = SparseGPRegressor(num_inducing=20, max_iter=150, random_state=0).fit(X, y)
    X_te = np.linspace(-2.5, 2.5, 50)[:, None]
    mean, std = reg.predict(X_te, return_std=True)
    truth = np.sin(2 * X_te[:, 0]) * 10 + 50
    assert np.sqrt(np.mean((mean - truth) ** 2)) < 1.0
    assert np.all(std > 0.5) and np.all(std < 3.0)  # noise sd is 1 (plus latent uncertainty)


def test_student_t_regressor_resists_outliers():
    rng = np.random.default_rng(2)
    X = rng.uniform(-3, 3, size=(150, 1))
    y = np.sin(2 * X[:, 0]) + rng.normal(scale=0.1, size=150)
    y[::15] += 8.0  # 10 gross outliers
    X_te = np.linspace(-2.5, 2.5, 50)[:, None]
    truth = np.sin(2 * X_te[:, 0])
    err = {}
    for lik in ("gaussian", "studentt"):
        reg = SparseGPRegressor(likelihood=lik, num_inducing=20, max_iter=150, random_state=0)
        err[lik] = np.sqrt(np.mean((reg.fit(X, y).predict(X_te) - truth) ** 2))
    assert err["studentt"] < 0.5 * err["gaussian"]


def test_count_regressor_recovers_the_rate():
    rng = np.random.default_rng(3)
    X = rng.uniform(-3, 3, size=(300, 1))
    rate = np.exp(1.5 + np.sin(X[:, 0]))
    y = rng.poisson(rate)
    reg = SparseGPCountRegressor(num_inducing=15, max_iter=150, random_state=0).fit(X, y)
    X_te = np.linspace(-2.5, 2.5, 40)[:, None]
    truth = np.exp(1.5 + np.sin(X_te[:, 0]))
    assert np.max(np.abs(reg.predict(X_te) / truth - 1.0)) < 0.25


def test_count_regressor_rejects_negative_or_fractional_counts():
    X = np.zeros((4, 1)) + np.arange(4)[:, None]
    with pytest.raises(ValueError, match="non-negative integer counts"):
        SparseGPCountRegressor(**TINY).fit(X, [0, 1, -1, 2])
    with pytest.raises(ValueError, match="non-negative integer counts"):
        SparseGPCountRegressor(**TINY).fit(X, [0, 1, 0.5, 2])


def test_single_class_is_a_clear_error():
    with pytest.raises(ValueError, match="only one class"):
        SparseGPClassifier(**TINY).fit(np.random.default_rng(0).random((10, 2)), ["a"] * 10)


@pytest.mark.parametrize(
    ("setting", "match"),
    [({"num_inducing": 0}, "num_inducing"), ({"method": "sgd"}, "method"),
     ({"kernel": "linear"}, "kernel"), ({"tol": -1.0}, "tol"), ({"link": "cauchit"}, "link"),
     ({"dtype": "float16"}, "dtype")],
)
def test_bad_settings_raise_at_fit(setting, match):
    X, y = np.random.default_rng(0).random((10, 2)), np.arange(10) % 2
    with pytest.raises(ValueError, match=match):
        SparseGPClassifier(**{**TINY, **setting}).fit(X, y)


def test_save_load_round_trip_with_weights_only(tmp_path, breast_cancer_fit):
    clf, X_te, _ = breast_cancer_fit
    path = tmp_path / "clf.pt"
    clf.save(path)
    blob = torch.load(path, weights_only=True)  # plain data and tensors only
    assert blob["estimator"] == "SparseGPClassifier"
    again = load(path)
    np.testing.assert_array_equal(again.predict_proba(X_te), clf.predict_proba(X_te))
    assert again.get_params() == clf.get_params()


def test_load_rejects_a_file_that_is_not_a_natvi_model(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a natvi model file"):
        load(tmp_path / "other.pt")


def test_kmeans_inducing_points_spread_over_the_data():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    X = np.concatenate([c + 0.1 * rng.normal(size=(30, 2)) for c in centres])
    Z = kmeans_inducing_points(X, 3, seed=0)
    d = np.linalg.norm(Z[:, None] - centres[None], axis=-1)
    assert np.all(d.min(axis=0) < 0.2)  # one inducing point at each cluster
    few = np.repeat(np.eye(2), 5, axis=0)
    np.testing.assert_array_equal(kmeans_inducing_points(few, 10, seed=0), np.unique(few, axis=0))


def test_estimators_are_exported_from_natvi():
    assert natvi.SparseGPClassifier is SparseGPClassifier
    assert natvi.SparseGPRegressor is SparseGPRegressor
    assert natvi.SparseGPCountRegressor is SparseGPCountRegressor


# Every check of sklearn.utils.estimator_checks runs with small settings (CHECKS: 10 inducing
# points, 30 iterations, natural steps of size 1 — for the conjugate Gaussian likelihood one such
# step reaches the optimal q — so the checks' fit-quality bars are met).
# The count regressor cannot pass the checks that train on the checks' own real-valued or
# negative targets: a Poisson likelihood takes non-negative integer counts and rejects anything
# else with a ValueError, by design. Each such check is listed with that reason and must fail.
_REAL_TARGETS = (
    "the check trains on real-valued/negative targets, which the Poisson likelihood rejects "
    "(non-negative integer counts only) by design"
)
_EXPECTED_FAILURES = {
    SparseGPCountRegressor: dict.fromkeys(
        (
            "check_regressors_train",
            "check_regressor_data_not_an_array",
            "check_n_features_in_after_fitting",
            "check_regressors_no_decision_function",
            "check_fit_idempotent",
            "check_fit_check_is_fitted",
            "check_n_features_in",
        ),
        _REAL_TARGETS,
    ),
}


def _expected_failed_checks(est):
    return _EXPECTED_FAILURES.get(type(est), {})


@parametrize_with_checks(
    [
        SparseGPClassifier(**CHECKS),
        SparseGPRegressor(**CHECKS),
        SparseGPCountRegressor(**CHECKS),
    ],
    expected_failed_checks=_expected_failed_checks,
    xfail_strict=True,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
