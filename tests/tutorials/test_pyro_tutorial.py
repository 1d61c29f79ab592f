"""The Pyro tutorial runs end to end in quick mode and writes its plots and summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pyro_tutorial_quick_mode_writes_plots_and_summary(tmp_path):
    env = {**os.environ, "NATVI_TUTORIAL_OUT": str(tmp_path), "NATVI_TUTORIAL_QUICK": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tutorials" / "pyro_natural_svi.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("elbo.png", "marginals.png", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    summary = (tmp_path / "summary.md").read_text()
    assert "breast_cancer" in summary and "ill_conditioned" in summary
    rows = [r.split("|") for r in summary.splitlines()[2:]]
    steps_to = {(r[1].strip(), r[2].strip()): r[4].strip() for r in rows}
    # NaturalSVI reaches the NUTS means (within 0.25 sd) inside its 30 quick steps on both
    for problem in ("breast_cancer", "ill_conditioned"):
        assert steps_to[problem, "natural"] != "None", summary
