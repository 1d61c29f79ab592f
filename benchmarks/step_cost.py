"""Per-iteration cost: natvi natural step vs Adam step vs GPyTorch NGD, against M and N.

One iteration is what a training loop does: ``zero_grad``, the total ELBO on all N points,
``backward``, and the optimiser steps — a natural step on q plus Adam on the hyperparameters
(``natvi-ngd``, ``gpytorch-ngd``) or Adam on everything (``natvi-adam``, ``gpytorch-adam``).
Same two-moons data, kernel, Z and hyperparameters for every method (see
:mod:`benchmarks._gp_peers`); the medians are taken over repeats of that iteration, and the
ratios between methods measured side by side in one process are the figure.

Run: ``python -m benchmarks step_cost [--quick]``.
"""

from __future__ import annotations

import functools

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import _common  # noqa: E402
from benchmarks._gp_peers import METHODS, make_method  # noqa: E402
from models import two_moons  # noqa: E402

NAME = "step_cost"
FULL = {"M": [50, 100, 200, 500, 1000], "N": [1000, 4000], "repeats": 5}
QUICK = {"M": [20, 50], "N": [200], "repeats": 3}


def measure(M: int, N: int, repeats: int, seed: int) -> dict:
    """Median seconds per iteration of every method on two moons with N points, M inducing."""
    build = functools.partial(two_moons.build, seed=seed, num_data=int(N / 0.8), num_inducing=M)
    steps = {name: make_method(name, build).step for name in METHODS}
    # Interleave the methods so that a change in machine load hits them alike.
    times = {name: [] for name in METHODS}
    for name in METHODS:
        steps[name]()  # warm-up
    for _ in range(repeats):
        for name in METHODS:
            times[name] += _common.time_call(steps[name], repeats=1, warmup=0)
    row = {"M": M, "N": N}
    row.update({f"{name}_ms": 1e3 * _common.median(times[name]) for name in METHODS})
    row["natvi-ngd / gpytorch-ngd"] = row["natvi-ngd_ms"] / row["gpytorch-ngd_ms"]
    row["natvi-ngd / natvi-adam"] = row["natvi-ngd_ms"] / row["natvi-adam_ms"]
    row["gpytorch-ngd / gpytorch-adam"] = row["gpytorch-ngd_ms"] / row["gpytorch-adam_ms"]
    return row


def plot(rows: list[dict], path) -> None:
    Ns = sorted({r["N"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ni, N in enumerate(Ns):
        sub = [r for r in rows if r["N"] == N]
        Ms = [r["M"] for r in sub]
        ls = ["-", "--", ":", "-."][ni % 4]
        for mi, name in enumerate(METHODS):
            axes[0].loglog(
                Ms,
                [r[f"{name}_ms"] for r in sub],
                ls=ls,
                marker="o",
                color=f"C{mi}",
                label=f"{name}, N={N}",
            )
        axes[1].semilogx(
            Ms,
            [r["natvi-ngd / gpytorch-ngd"] for r in sub],
            ls=ls,
            marker="o",
            color="C0",
            label=f"natvi NGD / GPyTorch NGD, N={N}",
        )
        axes[1].semilogx(
            Ms,
            [r["natvi-ngd / natvi-adam"] for r in sub],
            ls=ls,
            marker="s",
            color="C1",
            label=f"natvi NGD / natvi Adam, N={N}",
        )
    axes[1].axhline(0.5, color="k", ls=":", lw=1, label="target 0.5 (vs GPyTorch NGD)")
    axes[1].axhline(1.0, color="gray", ls="-", lw=0.5)
    axes[0].set_ylabel("ms per iteration (median)")
    axes[1].set_ylabel("time ratio per iteration")
    for ax in axes:
        ax.set_xlabel("M (inducing points)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    p = _common.parser(NAME, __doc__.splitlines()[0], threads=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    grid = QUICK if args.quick else FULL
    rows = [
        measure(M, N, grid["repeats"], args.seed) for N in grid["N"] for M in grid["M"] if M <= N
    ]
    d = _common.out_dir(args, NAME)
    _common.write_csv(d / "step_cost.csv", rows)
    plot(rows, d / "step_cost.png")
    settings = {
        "quick": args.quick,
        "grid": grid,
        "dtype": "float64",
        "model": "two moons, Bernoulli (probit), ARD RBF × scale, whitened, learnable Z",
        "iteration": "zero_grad + total ELBO on all N + backward + optimiser step(s)",
    }
    notes = (
        "Ratios < 1 mean natvi's natural iteration is cheaper. The issue's target is "
        "natvi-ngd / gpytorch-ngd ≤ 0.5. The machine is shared with other jobs: the methods are "
        "interleaved repeat by repeat so load changes hit them alike; medians over repeats."
    )
    _common.write_report(
        d / "README.md",
        "Per-iteration cost: natural step vs Adam step vs GPyTorch NGD",
        f"python -m benchmarks {NAME}" + (" --quick" if args.quick else ""),
        settings,
        {"Median ms per iteration and ratios": rows},
        notes=notes,
    )
    print(_common.markdown_table(rows))
    return 0
