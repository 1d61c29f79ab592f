"""The four GP benchmarks run in --quick mode and write their CSV, PNG and Markdown report."""

from __future__ import annotations

import csv
import importlib
from pathlib import Path

import pytest

EXPECTED = {
    "wallclock": {
        "summary.csv": {"model", "method", "time_to_target_s", "time_ratio_vs_natvi_ngd"},
        "traces.csv": {"model", "method", "seed", "iteration", "time", "elbo", "heldout"},
    },
    "ill_conditioned": {
        "sweep.csv": {"series", "method", "iters_to_target", "condition_number", "optimum_elbo"},
    },
    "step_cost": {
        "step_cost.csv": {"likelihood", "whiten", "dtype", "M", "N", "natvi_ms", "interop_ms",
                          "natvi_recomputed_ms", "gpytorch_ms", "gpflow_ms",
                          "natvi / fastest peer", "natvi_recomputed / fastest peer",
                          "interop / gpytorch", "interop_recomputed_ms",
                          "interop_recomputed / gpytorch"},
    },
    "stability": {
        "runs.csv": {
            "library",
            "parameterization",
            "likelihood",
            "dtype",
            "whiten",
            "gamma",
            "failed",
        },
    },
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``quick_run(name)``: the results folder of ``name --quick``, run once per module."""
    done: dict[str, Path] = {}

    def run(name: str) -> Path:
        if name not in done:
            out = tmp_path_factory.mktemp("results")
            module = importlib.import_module(f"benchmarks.{name}")
            assert module.main(["--quick", "--out", str(out)]) == 0
            done[name] = out / name
        return done[name]

    return run


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_quick_mode_writes_csv_png_and_report(name: str, quick_run) -> None:
    d = quick_run(name)
    for csv_name, columns in EXPECTED[name].items():
        rows = _rows(d / csv_name)
        assert rows, f"{csv_name} is empty"
        assert columns <= set(rows[0]), f"{csv_name} lacks {columns - set(rows[0])}"
    pngs = list(d.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    report = (d / "README.md").read_text()
    assert f"python -m benchmarks {name} --quick" in report
    assert "## Machine" in report and "| " in report


def test_ill_conditioned_quick_natural_reaches_the_exact_conjugate_optimum_in_one_step(
    quick_run,
) -> None:
    rows = _rows(quick_run("ill_conditioned") / "sweep.csv")
    natural = [
        r for r in rows if r["method"].startswith("natural") and "bernoulli" not in r["series"]
    ]
    assert natural and all(float(r["iters_to_target"]) == 1.0 for r in natural)
    # The worse-conditioned Gaussian case takes Adam longer than the better-conditioned one.
    adam = [r for r in rows if r["method"] == "adam lr=0.1" and r["series"] == "noise"]
    adam.sort(key=lambda r: float(r["condition_number"]))
    assert float(adam[-1]["iters_to_target"]) > float(adam[0]["iters_to_target"])
