"""The ``natvi`` command and the files it reads and writes (issue 18, cases 1, 3 and 4): a save
that fails midway leaves the previous model intact (one line, exit 1); a bad output path is one
line, exit 2, before any training; a damaged model file is one line naming it, exit 2; a model
saved from Python works with ``natvi predict``."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from natvi.cli import main
from natvi.estimators import SparseGPClassifier, load
from tests.test_cli import _toy_rows, _write_csv

FIT = ["--max-iter", "3", "--inducing", "4", "--no-progress"]


@pytest.fixture(autouse=True)
def _capped_fits_are_meant():
    """FIT stops at 3 iterations on purpose; its ConvergenceWarning is not the stderr line these
    tests read (also when pytest's warning capture is off, ``-p no:warnings``)."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_csv(tmp_path / "good.csv", ["x1", "x2", "label"], _toy_rows())
    return tmp_path


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> bytes:
    """A small model written by ``natvi fit``."""
    d = tmp_path_factory.mktemp("model")
    _write_csv(d / "good.csv", ["x1", "x2", "label"], _toy_rows())
    assert main(["fit", str(d / "good.csv"), "--target", "label", "--out", str(d / "m.pt"),
                 *FIT]) == 0
    return (d / "m.pt").read_bytes()


def _files(work) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file()}


def _one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_fit_whose_save_fails_midway_keeps_the_previous_model(work, capsys, monkeypatch,
                                                              model_bytes):
    (work / "m.pt").write_bytes(model_bytes)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[:200])
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos\n"
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    before = _files(work)
    assert main(["fit", "good.csv", "--target", "label", "--out", "m.pt", *FIT]) == 1
    _one_line(capsys, "natvi fit: error: m.pt: writing failed", "file write failed",
              "previous file, if any, is intact")
    assert _files(work) == before  # m.pt untouched, no temporary left behind
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["predict", "m.pt", "good.csv"]) == 0
    assert capsys.readouterr().out.startswith("prediction,p_no,p_yes\n")


@pytest.mark.parametrize("argv, needles", [
    (["fit", "good.csv", "--target", "label", "--out", "good.csv/m.pt"],
     ["--out good.csv/m.pt: good.csv is a file, not a directory"]),
    (["fit", "good.csv", "--target", "label", "--out", "nodir/m.pt"],
     ["directory nodir does not exist"]),
    (["compare", "good.csv", "--target", "label", "--out", "good.csv/out"],
     ["good.csv is a file, not a directory"]),
    (["demo", "--out", "good.csv/demo"], ["good.csv is a file, not a directory"]),
    (["predict", "m.pt", "good.csv", "--out", "good.csv/p.csv"],
     ["--out good.csv/p.csv: good.csv is a file, not a directory"]),
])
def test_bad_output_path_fails_before_any_work(work, capsys, monkeypatch, model_bytes, argv,
                                               needles):
    (work / "m.pt").write_bytes(model_bytes)
    import natvi.estimators._base as base

    def no_training(*args, **kwargs):
        raise AssertionError("training started although --out is unusable")

    monkeypatch.setattr(base.SparseGPBase, "_fit_model", no_training)
    before = _files(work)
    assert main(argv) == 2
    _one_line(capsys, *needles)
    assert _files(work) == before


def test_predict_out_is_written_atomically(work, capsys, model_bytes):
    (work / "m.pt").write_bytes(model_bytes)
    (work / "p.csv").write_text("old\n")
    assert main(["predict", "m.pt", "good.csv", "--out", "p.csv"]) == 0
    assert (work / "p.csv").read_text().startswith("prediction,p_no,p_yes\n")
    assert sorted(p.name for p in work.iterdir()) == ["good.csv", "m.pt", "p.csv"]


def _damaged(work, model_bytes) -> list[tuple[str, str]]:
    (work / "truncated.pt").write_bytes(model_bytes[: len(model_bytes) // 2])
    (work / "garbage.pt").write_bytes(bytes(range(256)) * 4)
    blob = torch.load(io.BytesIO(model_bytes), weights_only=True)
    del blob["fitted"]["classes_"]
    torch.save(blob, work / "incomplete.pt")
    return [("truncated.pt", "is truncated"), ("garbage.pt", "not a file written by torch.save"),
            ("incomplete.pt", "incomplete (its fitted state lacks 'classes_')")]


def test_predict_with_a_damaged_model_names_the_file(work, capsys, model_bytes):
    for name, needle in _damaged(work, model_bytes):
        before = _files(work)
        assert main(["predict", name, "good.csv", "--out", "p.csv"]) == 2
        _one_line(capsys, f"natvi predict: error: {name}", needle)
        assert _files(work) == before


def test_resume_from_a_damaged_checkpoint_names_the_file(work, model_bytes):
    from natvi import fit
    from tests.test_fit import LogisticReg, classification_data

    X, y = classification_data(N=20)
    for name, needle in _damaged(work, model_bytes)[:2]:
        with pytest.raises(ValueError, match=needle) as info:
            fit(LogisticReg(3), X, y, iterations=2, checkpoint=work / name, resume=True,
                progress=False)
        assert name in str(info.value)


def test_model_saved_from_python_works_with_natvi_predict(work, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2))
    y = np.where(X[:, 0] > 0, "yes", "no")
    clf = SparseGPClassifier(num_inducing=4, max_iter=3, random_state=0).fit(X, y)
    clf.save(work / "py.pt")
    _write_csv(work / "new.csv", ["a", "b"], [[f"{u:.17g}", f"{v:.17g}"] for u, v in X[:5]])
    assert main(["predict", "py.pt", "new.csv"]) == 0
    out = capsys.readouterr()
    assert "using the 2 columns of new.csv in order" in out.err
    lines = out.out.splitlines()
    assert lines[0] == "prediction,p_no,p_yes"
    p_yes = np.array([float(line.split(",")[2]) for line in lines[1:]])
    np.testing.assert_allclose(p_yes, load(work / "py.pt").predict_proba(X[:5])[:, 1], rtol=1e-5)

    assert main(["predict", "py.pt", "good.csv"]) == 2
    _one_line(capsys, "py.pt was saved without feature names", "2 features",
              "good.csv has 3 columns")
