"""The elbo_cost benchmark runs in quick mode and writes its CSV, plot and report."""

from __future__ import annotations

import csv

from benchmarks import elbo_cost


def test_quick_mode_writes_csv_png_and_report(tmp_path):
    assert elbo_cost.main(["--quick", "--repeats", "2", "--out", str(tmp_path)]) == 0
    out = tmp_path / "elbo_cost"
    rows = list(csv.DictReader(open(out / "elbo_cost.csv")))
    assert {r["impl"] for r in rows} == {"gpytorch", "natvi-Natural", "natvi-MeanCholesky"}
    assert {int(r["M"]) for r in rows} == {50, 100}
    assert all(float(r["median_ms"]) > 0 for r in rows)
    assert all(float(r["ratio_to_gpytorch"]) == 1.0 for r in rows if r["impl"] == "gpytorch")
    assert (out / "elbo_cost.png").stat().st_size > 0
    assert "ratio_to_gpytorch" in (out / "README.md").read_text()
