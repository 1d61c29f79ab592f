"""The ``natvi`` command's skeleton: entry point, help, errors as one line with status 2."""

from __future__ import annotations

import subprocess
import sys

from natvi.cli import main


def test_demo_entry_point_runs(capsys):
    assert main(["demo"]) == 0
    assert "natvi" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: natvi" in capsys.readouterr().out


def test_python_dash_m_natvi_runs():
    out = subprocess.run(
        [sys.executable, "-m", "natvi", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("natvi ")
