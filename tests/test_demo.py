"""``natvi demo``: both problems, both methods, the table, the plot and the CSVs; on the
ill-conditioned problem natural steps settle at a higher ELBO than Adam on q."""

from __future__ import annotations

import csv

from natvi.cli import main


def test_quick_demo_writes_table_plot_and_csvs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("summary.csv", "history.csv", "elbo_vs_time.png"):
        assert (out / name).stat().st_size > 0
        assert str(out / name) in printed
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["problem"], r["method"]) for r in rows] == [
        ("breast cancer", "natgrad"), ("breast cancer", "adam"),
        ("ill-conditioned counts", "natgrad"), ("ill-conditioned counts", "adam"),
    ]
    assert all(r["ended_by"] in ("plateau", "max_iter") for r in rows)
    counts = {r["method"]: r for r in rows[2:]}
    assert counts["natgrad"]["ended_by"] == "plateau"
    assert float(counts["natgrad"]["final_elbo_per_datum"]) > float(
        counts["adam"]["final_elbo_per_datum"]) + 1.0
    assert float(rows[0]["test_accuracy"]) > 0.9
