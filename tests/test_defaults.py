"""Training defaults: the ELBO-plateau stopping rule, estimators that end by it, a
``ConvergenceWarning`` when they do not, and ``natvi fit`` following the estimator's limit."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_moons
from sklearn.exceptions import ConvergenceWarning

import natvi
from natvi._history import History
from natvi.estimators import SparseGPClassifier
from natvi.estimators._base import TRAINING_DEFAULTS
from natvi.stopping import ElboPlateau


def _history(elbos) -> History:
    h = History()
    for i, e in enumerate(elbos):
        h.append(iteration=i, elbo=float(e), time=float(i), lr=1.0, events=[], metric=None)
    return h


def _first_stop(rule: ElboPlateau, elbos) -> int | None:
    """The number of iterations after which ``rule`` first says stop (as natvi.fit calls it)."""
    for t in range(1, len(elbos) + 1):
        if rule(_history(elbos[:t])):
            return t
    return None


def test_plateau_stops_where_the_best_gain_over_the_window_first_drops_below_tol():
    # ELBO_t = N (1 - 2^{-t}): the gain of the best value over the last w iterations is
    # 2^{-(T-w)} - 2^{-T} per datum, below tol first at the T computed here by brute force.
    N, w, tol = 100, 3, 1e-3
    elbos = [N * (1 - 2.0**-t) for t in range(40)]
    expected = next(T for T in range(w + 1, 41) if 2.0 ** -(T - w - 1) - 2.0 ** -(T - 1) < tol)
    rule = ElboPlateau(tol=tol, n_iter_no_change=w, num_data=N)
    assert _first_stop(rule, elbos) == expected
    assert rule.stopped and rule.last_gain < tol


def test_plateau_is_not_fooled_by_one_low_iteration():
    # still improving by 0.01 per step, with one dip far below: the last-vs-first rule would
    # stop here, the best-vs-best rule does not
    elbos = [0.01 * t for t in range(30)]
    elbos[25] = -5.0
    assert _first_stop(ElboPlateau(tol=1e-3, n_iter_no_change=5), elbos) is None


def test_plateau_does_not_call_a_fall_from_the_best_converged():
    elbos = [0.0] * 10 + [-1.0] * 20  # settled, then fell and stays below: not converged
    assert _first_stop(ElboPlateau(tol=1e-3, n_iter_no_change=5), elbos) == 6
    assert _first_stop(ElboPlateau(tol=1e-3, n_iter_no_change=5), [1.0] + elbos) is None


def test_plateau_waits_for_the_warmup_and_a_full_window():
    flat = [0.0] * 12
    assert _first_stop(ElboPlateau(tol=1.0, n_iter_no_change=4, start=5), flat) == 10


@pytest.mark.parametrize("kwargs", [{"tol": -1.0}, {"tol": math.nan}, {"n_iter_no_change": 0},
                                    {"num_data": 0}, {"start": -1}])
def test_plateau_rejects_bad_settings(kwargs):
    settings = {"tol": 1e-3, "n_iter_no_change": 5, **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ElboPlateau(**settings)


def _moons(n=200):
    X, y = make_moons(n, noise=0.2, random_state=0)
    return X, y


def test_defaults_end_by_the_stopping_rule_without_a_warning():
    X, y = _moons()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = SparseGPClassifier(num_inducing=10, random_state=0).fit(X, y)
    assert clf.max_iter == TRAINING_DEFAULTS["max_iter"]
    assert clf.n_iter_ < clf.max_iter
    elbo = np.asarray(clf.history_.elbo) / len(y)
    w, start = clf.n_iter_no_change, clf.warmup_iter
    gain = lambda T: elbo[T - w : T].max() - elbo[start : T - w].max()  # noqa: E731
    assert abs(gain(clf.n_iter_)) < clf.tol <= abs(gain(clf.n_iter_ - 1))
    assert clf.score(X, y) > 0.9


@pytest.mark.parametrize("hyper, advice", [("adam", "learning_rate"), ("lbfgs", "raise max_iter")])
def test_reaching_max_iter_warns_and_says_what_to_change(hyper, advice):
    X, y = _moons()
    with pytest.warns(ConvergenceWarning, match=rf"max_iter=30 .*{advice}"):
        clf = SparseGPClassifier(num_inducing=10, max_iter=30, hyper_optimizer=hyper,
                                 random_state=0).fit(X, y)
    assert clf.n_iter_ == 30


def test_adam_only_mode_steps_q_at_learning_rate():
    X, y = _moons(100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = SparseGPClassifier(num_inducing=5, method="adam", learning_rate=0.05, max_iter=5,
                                 random_state=0).fit(X, y)
    assert clf.history_.lr == [0.05] * 5


def test_fit_ends_early_by_an_elbo_plateau_rule():
    from models import two_moons

    problem = two_moons.build(num_data=100, num_inducing=8, seed=0)
    rule = ElboPlateau(tol=1e-3, n_iter_no_change=5, num_data=problem.num_data)
    torch.manual_seed(0)
    result = natvi.fit(problem.model, problem.X, problem.y, iterations=500, lr=1.0,
                       stop_when=rule, progress=False)
    assert result.stopped_early and rule.stopped
    assert len(result.history) < 500


def test_cli_fit_max_iter_follows_the_estimator_default():
    from natvi.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["fit", "data.csv", "--target", "y"])
    assert args.max_iter is None  # the estimator's own default applies
    fit_help = parser._subparsers._group_actions[0].choices["fit"].format_help()
    assert f"estimator's, {TRAINING_DEFAULTS['max_iter']}" in " ".join(fit_help.split())


def test_one_lengthscale_by_default_one_per_feature_with_ard():
    X, y = _moons(60)
    kw = {"num_inducing": 5, "max_iter": 3, "warmup_iter": 1, "random_state": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        iso = SparseGPClassifier(**kw).fit(X, y)
        ard = SparseGPClassifier(ard=True, **kw).fit(X, y)
    assert iso.model_.kernel.base_kernel.lengthscale.numel() == 1
    assert ard.model_.kernel.base_kernel.lengthscale.numel() == 2


def test_a_file_saved_before_ard_was_a_setting_loads_as_ard(tmp_path):
    from natvi.estimators import load

    X, y = _moons(60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = SparseGPClassifier(ard=True, num_inducing=5, max_iter=3, warmup_iter=1,
                                 random_state=0).fit(X, y)
    clf.save(tmp_path / "m.pt")
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    del blob["params"]["ard"]
    torch.save(blob, tmp_path / "old.pt")
    old = load(tmp_path / "old.pt")
    assert old.ard is True
    np.testing.assert_allclose(old.predict_proba(X), clf.predict_proba(X), rtol=1e-12)
