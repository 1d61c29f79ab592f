"""The dfm benchmark's quick mode writes its CSVs, plot and report, with sane contents."""

from __future__ import annotations

import csv

from benchmarks import dfm


def test_quick_mode_writes_tables_plot_and_report(tmp_path):
    assert dfm.main(["--quick", "--out", str(tmp_path)]) == 0
    out = tmp_path / "dfm"
    for name in ("cost.csv", "synthetic.csv", "digits.csv", "dfm.png", "README.md"):
        assert (out / name).stat().st_size > 0, name
    cost = list(csv.DictReader(open(out / "cost.csv")))
    assert all(float(r["rel_diff"]) < 1e-6 for r in cost)  # closed form == dense solve
    synth = list(csv.DictReader(open(out / "synthetic.csv")))
    assert {r["method"] for r in synth} == {"SGD", "AdaGrad", "Adam", "SNGD", "DSNGD"}
    assert all(float(r["kl_final"]) >= 0 for r in synth)
    assert "(b) synthetic MLR" in (out / "README.md").read_text()
