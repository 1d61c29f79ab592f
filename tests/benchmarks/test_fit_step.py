"""The fit_step benchmark runs in quick mode and writes its CSV, PNG and report."""

from __future__ import annotations

import csv

import torch

from benchmarks import fit_step


def test_quick_mode_writes_csv_png_and_report(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert fit_step.main(["--quick", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "fit_step"
    rows = list(csv.DictReader(open(out / "fit_step.csv")))
    assert [r["M"] for r in rows] == ["50"]
    for r in rows:
        assert float(r["natgrad_ms"]) > 0 and float(r["adam_ms"]) > 0
        assert abs(float(r["ratio"]) - float(r["natgrad_ms"]) / float(r["adam_ms"])) < 1e-9
    assert (out / "fit_step.png").stat().st_size > 0
    assert "natural / Adam" in (out / "README.md").read_text()
