"""The tngd benchmark's quick mode runs and writes its CSVs, plot and report."""

from __future__ import annotations

import csv

from benchmarks import tngd


def test_quick_mode_writes_curves_summary_plot_and_report(tmp_path):
    assert tngd.main(["--quick", "--out", str(tmp_path)]) == 0
    out = tmp_path / "tngd"
    for name in ("curves.csv", "summary.csv", "ou_error.csv", "curves.png", "README.md"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    methods = {r["method"] for r in rows}
    assert {"Adam", "SGD", "NGD-Cholesky", "NGD-CG", "NGD-Woodbury", "TNGD-t5", "TNGD-t50"} <= methods
    by = {r["method"]: r for r in rows}
    # Cholesky and Woodbury solve the same system exactly: same trajectory
    assert abs(float(by["NGD-Cholesky"]["final_train_loss"])
               - float(by["NGD-Woodbury"]["final_train_loss"])) < 1e-4
    assert float(by["TNGD-t50"]["device_s_per_iter"]) > 0
    with open(out / "ou_error.csv") as f:
        errs = [float(r["relative_error_median"]) for r in csv.DictReader(f)]
    assert errs[-1] < errs[0]  # longer analog time, closer to the exact natural gradient
    assert "digital_vs_adam" in (out / "README.md").read_text()
