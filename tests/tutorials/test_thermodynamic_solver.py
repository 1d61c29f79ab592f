"""The thermodynamic-solver tutorial runs end to end in quick mode and writes its plots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TUTORIAL = Path(__file__).parents[2] / "tutorials" / "thermodynamic_solver.py"


def test_tutorial_runs_in_quick_mode(tmp_path):
    env = {**os.environ, "NATVI_TUTORIAL_QUICK": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(TUTORIAL), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("ou_trajectory.png", "ou_bias_variance.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "sample mean" in proc.stdout
