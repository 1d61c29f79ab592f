"""The OU benchmark's quick mode runs and writes its tables, plot and report."""

from __future__ import annotations

import csv

from benchmarks import ou


def test_quick_mode_writes_csv_png_and_report(tmp_path):
    assert ou.main(["--quick", "--out", str(tmp_path)]) == 0
    d = tmp_path / "ou"
    for name in ("error_vs_time.csv", "error_vs_condition.csv", "digital_time.csv", "ou_error.png"):
        assert (d / name).stat().st_size > 0
    report = (d / "README.md").read_text()
    assert "Error vs analog time" in report and "python -m benchmarks ou --quick" in report
    with open(d / "error_vs_time.csv") as f:
        rows = list(csv.DictReader(f))
    # the measured error follows the theory curve (16 runs: within 35 %)
    for r in rows:
        assert abs(float(r["rel_rmse"]) / float(r["theory"]) - 1) < 0.35
    with open(d / "digital_time.csv") as f:
        solvers = {r["solver"].split("(")[0] for r in csv.DictReader(f)}
    assert {"cholesky", "cg", "ou_exact", "ou_euler"} <= solvers
