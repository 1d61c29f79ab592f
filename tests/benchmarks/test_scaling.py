"""The scaling benchmark runs in --quick mode (1 and 2 gloo processes) and writes its results."""

from __future__ import annotations

import csv
import math

from benchmarks import scaling


def test_quick_mode_measures_one_and_two_processes(tmp_path):
    assert scaling.main(["--quick", "--out", str(tmp_path)]) == 0
    d = tmp_path / "scaling"
    assert {p.name for p in d.iterdir()} == {
        "scaling.csv", "extrapolation.csv", "scaling.png", "README.md"
    }
    rows = list(csv.DictReader((d / "scaling.csv").open()))
    assert [(r["scaling"], int(r["processes"])) for r in rows] == [
        ("strong", 1), ("strong (distributed code path)", 1), ("strong", 2), ("weak", 1),
        ("weak", 2),
    ]
    for r in rows:
        for key in ("ms_median", "ms_min", "speedup", "efficiency", "cpu_ms", "cpu_speedup"):
            assert math.isfinite(float(r[key])) and float(r[key]) > 0, (key, r)
    strong2 = rows[2]
    assert math.isclose(float(strong2["efficiency"]), float(strong2["speedup"]) / 2, rel_tol=1e-9)
    report = (d / "README.md").read_text()
    assert "shared with other jobs" in report and "not a measurement" in report
    assert (d / "scaling.png").stat().st_size > 10_000
