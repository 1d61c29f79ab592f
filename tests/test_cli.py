"""The ``natvi`` command: every bad input is one line on stderr, exit status 2, nothing written;
``fit`` → ``predict`` round trip; ``demo``/``compare`` write their table, plot and CSVs."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from natvi.cli import main


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _toy_rows(n: int = 40, labels=("no", "yes"), seed: int = 0) -> list[list[object]]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    y = (X[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(int)
    return [[f"{a:.4f}", f"{b:.4f}", labels[c]] for (a, b), c in zip(X, y)]


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    _write_csv(tmp_path / "good.csv", ["x1", "x2", "label"], _toy_rows())
    return tmp_path


def _run_bad(capsys, work: Path, argv: list[str], *needles: str) -> str:
    before = sorted(p.name for p in work.rglob("*"))
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("natvi"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert sorted(p.name for p in work.rglob("*")) == before, "a file was written"
    return err


def _bad_files(work: Path) -> dict[str, Path]:
    rows = _toy_rows()
    files = {
        "text": _write_csv(work / "text.csv", ["x1", "colour", "label"],
                           [[r[0], "red", r[2]] for r in rows]),
        "nan": _write_csv(work / "nan.csv", ["x1", "x2", "label"],
                          [r if i != 3 else [r[0], "NaN", r[2]] for i, r in enumerate(rows)]),
        "empty_cell": _write_csv(work / "empty_cell.csv", ["x1", "x2", "label"],
                                 [r if i != 5 else ["", r[1], r[2]] for i, r in enumerate(rows)]),
        "one_class": _write_csv(work / "one_class.csv", ["x1", "x2", "label"],
                                [[r[0], r[1], "yes"] for r in rows]),
        "three": _write_csv(work / "three.csv", ["x1", "x2", "label"],
                            [[r[0], r[1], "abc"[i % 3]] for i, r in enumerate(rows)]),
        "neg": _write_csv(work / "neg.csv", ["x1", "x2", "label"],
                          [[r[0], r[1], -1 if i == 0 else i % 4] for i, r in enumerate(rows)]),
        "ragged": work / "ragged.csv",
        "empty": work / "empty.csv",
    }
    files["ragged"].write_text("x1,x2,label\n1,2,yes\n3,no\n")
    files["empty"].write_text("")
    return files


BAD_CASES = [
    (["fit", "missing.csv", "--target", "label"], ["no such file"]),
    (["fit", "good.csv", "--target", "nope"], ["no column named 'nope'", "x1, x2, label"]),
    (["fit", "text.csv", "--target", "label"], ["'colour' is not numeric", "'red'"]),
    (["fit", "nan.csv", "--target", "label"], ["'x2'", "NaN", "row 4"]),
    (["fit", "empty_cell.csv", "--target", "label"], ["'x1'", "missing", "row 6"]),
    (["fit", "one_class.csv", "--target", "label"], ["single class", "'yes'"]),
    (["fit", "three.csv", "--target", "label", "--likelihood", "bernoulli"],
     ["3 classes", "--likelihood softmax"]),
    (["fit", "neg.csv", "--target", "label", "--likelihood", "poisson"],
     ["non-negative integer counts", "-1"]),
    (["fit", "good.csv", "--target", "label", "--likelihood", "gaussian"],
     ["target 'label' is not numeric"]),
    (["fit", "ragged.csv", "--target", "label"], ["row 2 has 2 cells", "header has 3"]),
    (["fit", "empty.csv", "--target", "label"], ["empty"]),
    (["fit", "good.csv"], ["--target"]),
    (["fit", "good.csv", "--target", "label", "--inducing", "0"], ["--inducing", "positive"]),
    (["fit", "good.csv", "--target", "label", "--inducing", "ten"], ["--inducing", "'ten'"]),
    (["fit", "good.csv", "--target", "label", "--likelihood", "cauchy"], ["invalid choice"]),
    (["fit", "good.csv", "--target", "label", "--out", "no/such/dir/m.pt"], ["does not exist"]),
    (["fit", "good.csv", "--target", "label", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["frobnicate"], ["invalid choice: 'frobnicate'"]),
    (["predict", "missing.pt", "good.csv"], ["no such model file"]),
    (["predict", "good.csv", "good.csv"], ["not a natvi model file"]),
    (["compare", "good.csv", "--target", "label", "--test-size", "2"], ["--test-size", "(0, 1)"]),
    (["compare", "missing.csv", "--target", "label"], ["no such file"]),
    (["compare", "one_class.csv", "--target", "label"], ["single class"]),
    (["compare", "good.csv", "--target", "label", "--out", "good.csv"], ["not a directory"]),
    (["demo", "--out", "good.csv"], ["not a directory"]),
]


@pytest.mark.parametrize(("argv", "needles"), BAD_CASES, ids=[" ".join(a) for a, _ in BAD_CASES])
def test_bad_input_is_one_line_status_2_nothing_written(capsys, work, argv, needles):
    _bad_files(work)
    _run_bad(capsys, work, argv, *needles)


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: natvi" in capsys.readouterr().out


def test_bad_input_from_a_real_process_has_no_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "natvi", "fit", str(tmp_path / "missing.csv"), "--target", "y"],
        capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "no such file" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_python_dash_m_natvi_runs():
    out = subprocess.run(
        [sys.executable, "-m", "natvi", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("natvi ")
