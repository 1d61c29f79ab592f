"""Each product tutorial runs as plain Python in quick mode and writes its plots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = {
    "gp_classification.py": ["gp_classification_elbo.png", "gp_classification_proba.png"],
    "custom_parameterization.py": ["custom_parameterization.png"],
    "ill_conditioned.py": ["ill_conditioned.png"],
}


@pytest.mark.parametrize("name", sorted(TUTORIALS))
def test_tutorial_runs_in_quick_mode_and_writes_its_plots(name, tmp_path):
    env = {**os.environ, "NATVI_QUICK": "1", "NATVI_TUTORIAL_OUT": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "tutorials" / name)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for plot in TUTORIALS[name]:
        assert (tmp_path / plot).stat().st_size > 0
