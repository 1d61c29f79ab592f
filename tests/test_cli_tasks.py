"""The ``natvi`` command trains what the user meant and says what it trains (issue 18 case 5),
and features too large for plain standardisation are handled or refused clearly (case 6)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from natvi.cli import main
from natvi.estimators import SparseGPClassifier, load
from natvi.likelihoods import name_of
from tests.test_cli import _write_csv

FIT = ["--max-iter", "3", "--inducing", "4", "--no-progress"]


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _data(work, name: str, y, X=None):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(len(y), 2)) if X is None else X
    _write_csv(work / name, ["x1", "x2", "y"],
               [[f"{a:.17g}", f"{b:.17g}", v] for (a, b), v in zip(X, y)])


def _fit(capsys, argv) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_labels_0_1_2_train_a_softmax_classifier_and_say_so(work, capsys):
    _data(work, "three.csv", [i % 3 for i in range(45)])
    rc, out, _ = _fit(capsys, ["fit", "three.csv", "--target", "y", "--out", "m.pt", *FIT])
    assert rc == 0
    assert "target 'y' holds class labels: training with the softmax likelihood" in out
    assert "fitted SparseGPClassifier (softmax, 3 classes)" in out
    est = load(work / "m.pt")
    assert name_of(est.model_.likelihood) == "softmax" and list(est.classes_) == [0, 1, 2]
    assert main(["predict", "m.pt", "three.csv"]) == 0
    assert capsys.readouterr().out.startswith("prediction,p_0,p_1,p_2\n")


@pytest.mark.parametrize("labels, likelihood, kind, trained", [
    (["no", "yes"], None, "two classes", "bernoulli, 2 classes"),
    ([0.5, 1.7, 2.25], None, "real values", "gaussian"),
    ([0, 1, 2], "robustmax", None, "robustmax, 3 classes"),
    ([0, 1, 2, 5], "poisson", None, "poisson"),
])
def test_the_printed_likelihood_is_the_trained_one(work, capsys, labels, likelihood, kind,
                                                   trained):
    _data(work, "d.csv", [labels[i % len(labels)] for i in range(30)])
    extra = [] if likelihood is None else ["--likelihood", likelihood]
    rc, out, _ = _fit(capsys, ["fit", "d.csv", "--target", "y", "--out", "m.pt", *extra, *FIT])
    assert rc == 0
    if kind is not None:
        assert f"holds {kind}: training with the {trained.split(',')[0]} likelihood" in out
    else:
        assert "holds" not in out
    assert f"({trained})" in out
    assert name_of(load(work / "m.pt").model_.likelihood) == trained.split(",")[0]


@pytest.mark.parametrize("likelihood", ["softmax", "robustmax"])
def test_a_multiclass_likelihood_on_binary_labels_is_refused(work, capsys, likelihood):
    _data(work, "two.csv", ["no", "yes"] * 15)
    before = sorted(p.name for p in work.iterdir())
    rc, out, err = _fit(capsys, ["fit", "two.csv", "--target", "y", "--likelihood", likelihood,
                                 *FIT])
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert f"two.csv: target 'y' has 2 classes: natvi trains two classes with one latent GP " \
           f"and the bernoulli likelihood, not {likelihood}; use --likelihood bernoulli" in err
    assert sorted(p.name for p in work.iterdir()) == before


def test_many_distinct_integers_ask_for_a_likelihood(work, capsys):
    _data(work, "ints.csv", list(range(30)))
    rc, _, err = _fit(capsys, ["fit", "ints.csv", "--target", "y", *FIT])
    assert rc == 2
    assert "target 'y' holds 30 distinct integers: class labels, counts or measurements? " \
           "Say which with --likelihood softmax" in err
    assert not (work / "model.pt").exists()


def test_features_near_1e155_train_as_well_as_unscaled_ones():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    big = X * np.array([1.0, 1e155])
    kw = dict(num_inducing=5, max_iter=10, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ref = SparseGPClassifier(**kw).fit(X, y)
        clf = SparseGPClassifier(**kw).fit(big, y)
        p_big = clf.predict_proba(big)
    np.testing.assert_allclose(p_big, ref.predict_proba(X), atol=1e-6)
    assert clf.score(big, y) == ref.score(X, y) > 0.8
    np.testing.assert_allclose(clf.x_scale_ / ref.x_scale_, [1.0, 1e155], rtol=1e-12)


def test_features_that_cannot_be_standardised_are_a_clear_error(work, capsys):
    X = np.column_stack([np.tile([1.7e308, -1.7e308, -1.7e308], 10), np.arange(30.0)])
    y = np.arange(30) % 2
    with pytest.raises(ValueError, match=r"standardising X gave non-finite values in feature\(s\) "
                                         r"\[0\].*rescale those features"):
        SparseGPClassifier(num_inducing=3, max_iter=2).fit(X, y)
    _data(work, "huge.csv", list(y), X=X)
    rc, _, err = _fit(capsys, ["fit", "huge.csv", "--target", "y", *FIT])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("natvi fit: error: huge.csv: standardising X gave non-finite values")
    assert not (work / "model.pt").exists()
