"""Files natvi writes are replaced atomically (a failure midway leaves the old file intact and
names the file); output paths are checked before any work; corrupt, truncated, foreign or
incomplete model and checkpoint files are a ``ValueError`` naming the file (issue 18, cases 1,
3 and 4 in the library; the CLI's side is in ``tests/test_cli.py``)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

import natvi
from natvi import _io
from natvi._io import (
    WriteError,
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_text,
    check_output_dir,
    check_output_file,
)
from natvi.estimators import SparseGPClassifier, load
from natvi.parameterizations import Natural
from tests.test_fit import LogisticReg, classification_data


def _fail_midway(monkeypatch, after: int = 100) -> None:
    """Make every write through ``torch.save`` stop after ``after`` bytes like a full disk."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        import io

        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[:after])
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\n"
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", save)


def _siblings(path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_atomic_write_text_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("old\n")
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert _siblings(path) == ["a.csv"]


def test_a_failure_inside_the_writer_keeps_the_old_file_and_names_it(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("old\n")
    with pytest.raises(WriteError, match=r"a\.csv: writing failed \(No space left on device\)"):
        with _io.atomic_write(path, "w") as fh:
            fh.write("half of the new")
            raise OSError(28, "No space left on device")
    assert path.read_text() == "old\n"
    assert _siblings(path) == ["a.csv"]


def test_a_failing_fsync_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "rows.csv"
    atomic_write_csv(path, [{"a": 1, "b": 2}])
    before = path.read_bytes()

    def fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(WriteError, match="rows.csv"):
        atomic_write_csv(path, [{"a": 3, "b": 4}] * 1000)
    assert path.read_bytes() == before == b"a,b\r\n1,2\r\n"
    assert _siblings(path) == ["rows.csv"]


def test_atomic_write_keeps_the_permissions_of_the_old_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write_text(path, "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_torch_save_failing_midway_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    atomic_torch_save({"w": torch.arange(3.0)}, path)
    before = path.read_bytes()
    _fail_midway(monkeypatch)
    with pytest.raises(WriteError, match=r"w\.pt: writing failed \(.*file write failed"):
        atomic_torch_save({"w": torch.zeros(10_000)}, path)
    assert path.read_bytes() == before
    assert _siblings(path) == ["w.pt"]


# --- issue 18 case 1: a failed est.save destroys nothing ------------------------------------
@pytest.fixture(scope="module")
def small_clf():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2))
    y = (X[:, 0] > 0).astype(int)
    return SparseGPClassifier(num_inducing=5, max_iter=5, random_state=0).fit(X, y), X


def test_failed_estimator_save_leaves_the_previous_model_loadable(tmp_path, monkeypatch, small_clf):
    clf, X = small_clf
    path = tmp_path / "m.pt"
    clf.save(path)
    before = path.read_bytes()
    _fail_midway(monkeypatch)
    match = r"m\.pt: writing failed.*previous file, if any, is intact"
    with pytest.raises(WriteError, match=match):
        clf.save(path)
    assert path.read_bytes() == before
    assert _siblings(path) == ["m.pt"]
    monkeypatch.undo()
    np.testing.assert_array_equal(load(path).predict_proba(X), clf.predict_proba(X))


# --- issue 18 case 3: output paths are checked before any work ------------------------------
def test_output_file_checks(tmp_path):
    (tmp_path / "good.csv").write_text("x\n")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match=r"good\.csv is a file, not a directory"):
        check_output_file(tmp_path / "good.csv" / "m.pt", "--out")
    with pytest.raises(ValueError, match=r"good\.csv is a file, not a directory"):
        check_output_file(tmp_path / "good.csv" / "sub" / "m.pt", "--out")
    with pytest.raises(ValueError, match="nodir does not exist"):
        check_output_file(tmp_path / "nodir" / "m.pt", "--out")
    with pytest.raises(ValueError, match="is a directory"):
        check_output_file(tmp_path / "folder", "--out")
    assert check_output_file(tmp_path / "folder" / "m.pt") == tmp_path / "folder" / "m.pt"


def test_output_dir_checks(tmp_path):
    (tmp_path / "good.csv").write_text("x\n")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        check_output_dir(tmp_path / "good.csv")
    with pytest.raises(ValueError, match=r"good\.csv is a file, not a directory"):
        check_output_dir(tmp_path / "good.csv" / "out")
    with pytest.raises(ValueError, match="does not exist"):
        check_output_dir(tmp_path / "a" / "b")
    assert check_output_dir(tmp_path / "new") == tmp_path / "new"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_directory_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="is not writable"):
            check_output_file(ro / "m.pt")
    finally:
        ro.chmod(0o700)


def test_fit_checks_the_checkpoint_path_before_the_first_iteration(tmp_path):
    (tmp_path / "good.csv").write_text("x\n")
    X, y = classification_data(N=20)
    model = LogisticReg(3, Natural())
    before = [p.clone() for p in model.parameters()]
    calls = []
    for bad, match in [("nodir/ck.pt", "nodir does not exist"),
                       ("good.csv/ck.pt", "good.csv is a file, not a directory")]:
        with pytest.raises(ValueError, match=match):
            natvi.fit(model, X, y, iterations=20, checkpoint=tmp_path / bad, progress=False,
                      callback=lambda m, h: calls.append(1))
    assert calls == []
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert _siblings(tmp_path / "good.csv") == ["good.csv"]


def test_fit_checkpoint_write_failing_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    X, y = classification_data(N=20)
    path = tmp_path / "ck.pt"
    natvi.fit(LogisticReg(3, Natural()), X, y, iterations=2, checkpoint=path, progress=False)
    before = path.read_bytes()
    _fail_midway(monkeypatch)
    with pytest.raises(WriteError, match=r"ck\.pt: writing failed"):
        natvi.fit(LogisticReg(3, Natural()), X, y, iterations=4, checkpoint=path,
                  progress=False)
    assert path.read_bytes() == before
    assert _siblings(path) == ["ck.pt"]


# --- issue 18 case 4: corrupt files are a ValueError naming the file ------------------------
def _damaged_files(good, tmp_path) -> dict[str, tuple]:
    data = good.read_bytes()
    files = {
        "truncated": (data[: len(data) // 2], "is truncated"),
        "garbage": (bytes(range(256)) * 8, "not a file written by torch.save"),
        "text": (b"hello world\n", "not a file written by torch.save"),
        "empty": (b"", "the file is empty"),
    }
    out = {}
    for name, (content, match) in files.items():
        p = tmp_path / f"{name}.pt"
        p.write_bytes(content)
        out[name] = (p, match)
    return out


def test_damaged_checkpoint_is_a_value_error_naming_the_file(tmp_path):
    X, y = classification_data(N=20)
    good = tmp_path / "good.pt"
    natvi.fit(LogisticReg(3, Natural()), X, y, iterations=2, checkpoint=good, progress=False)
    cases = _damaged_files(good, tmp_path)
    blob = torch.load(good, weights_only=True)
    del blob["q_optimizer"]
    torch.save(blob, tmp_path / "incomplete.pt")
    cases["incomplete"] = (tmp_path / "incomplete.pt", r"incomplete \(no q_optimizer\)")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    cases["foreign"] = (tmp_path / "foreign.pt", "not a natvi checkpoint")
    torch.save({**torch.load(good, weights_only=True), "model": {"w": torch.zeros(7)}},
               tmp_path / "mismatch.pt")
    cases["mismatch"] = (tmp_path / "mismatch.pt", "does not match this model")
    for name, (path, match) in cases.items():
        model = LogisticReg(3, Natural())
        before = [p.clone() for p in model.parameters()]
        raw = path.read_bytes()
        with pytest.raises(ValueError, match=match) as info:
            natvi.fit(model, X, y, iterations=4, checkpoint=path, resume=True, progress=False)
        assert str(path) in str(info.value), name
        assert path.read_bytes() == raw, name
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), name


def test_damaged_model_file_is_a_value_error_naming_the_file(tmp_path, small_clf):
    clf, _ = small_clf
    good = tmp_path / "good.pt"
    clf.save(good)
    cases = _damaged_files(good, tmp_path)
    blob = torch.load(good, weights_only=True)
    del blob["fitted"]["classes_"]
    torch.save(blob, tmp_path / "incomplete.pt")
    cases["incomplete"] = (tmp_path / "incomplete.pt", r"incomplete .*lacks 'classes_'")
    blob = torch.load(good, weights_only=True)
    del blob["state_dict"]
    torch.save(blob, tmp_path / "no_state.pt")
    cases["no_state"] = (tmp_path / "no_state.pt", r"incomplete \(no state_dict\)")
    blob = torch.load(good, weights_only=True)
    blob["state_dict"] = {"nonsense": torch.zeros(1)}
    torch.save(blob, tmp_path / "wrong_state.pt")
    cases["wrong_state"] = (tmp_path / "wrong_state.pt", "damaged")
    cases["missing"] = (tmp_path / "missing.pt", "no such natvi model file")
    for name, (path, match) in cases.items():
        with pytest.raises(ValueError, match=match) as info:
            load(path)
        assert str(path) in str(info.value), name
