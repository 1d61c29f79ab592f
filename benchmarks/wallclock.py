"""Wall-clock comparison: natvi natural gradients vs Adam vs GPyTorch, with hyperparameter learning.

For each binary classification model (two moons, breast cancer) and each seed, the four methods of
:mod:`benchmarks._gp_peers` (natvi NGD + warm-up + Adam on hyperparameters, natvi Adam-only,
GPyTorch NGD + Adam, GPyTorch Adam-only) start from the same data, kernel, Z and initial
hyperparameters and run the same number of iterations. Recorded per iteration: the total ELBO,
the wall-clock time (held-out evaluation excluded) and, every few iterations, the held-out log
predictive density per test point.

Time-to-target: the time to get within ``1e-3`` nats per datum of the best ELBO any method reached
on that model and seed; reported as medians over seeds and as ratios to natvi NGD.

Run: ``python -m benchmarks wallclock [--quick]``.
"""

from __future__ import annotations

import functools
import math
import statistics

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import _common  # noqa: E402
from benchmarks._gp_peers import METHODS, make_method, train  # noqa: E402
from models import breast_cancer, two_moons  # noqa: E402

NAME = "wallclock"
TOL = 1e-3  # nats per datum
GAMMA = (1e-4, 0.1, 5)  # natural-gradient warm-up (γ0, γ1, K), Salimbeni et al. (2018)
ADAM_LR = 0.01

FULL = {
    "two_moons": (functools.partial(two_moons.build, num_data=2500, num_inducing=50), 600),
    "breast_cancer": (functools.partial(breast_cancer.build, num_inducing=50), 800),
}
QUICK = {
    "two_moons": (functools.partial(two_moons.build, num_data=400, num_inducing=15), 40),
    "breast_cancer": (functools.partial(breast_cancer.build, num_inducing=15), 40),
}


def gpflow_status() -> str:
    try:
        import gpflow  # noqa: F401
    except ImportError:
        return "GPflow is not installed here: its NaturalGradient peer was skipped."
    return "GPflow is installed but its TensorFlow peer is not wired into this benchmark: skipped."


def time_to_target(rows: list[dict], target: float) -> tuple[float, float]:
    """(iterations, seconds) until the ELBO first reaches ``target``; ``(inf, inf)`` if never."""
    for r in rows:
        if r["elbo"] >= target:
            return float(r["iteration"]), r["time"]
    return math.inf, math.inf


def run(models: dict, seeds: list[int], eval_every: int) -> tuple[list[dict], dict]:
    """Every method on every model and seed: per-iteration rows, and the runs keyed by
    ``(model, method, seed)``."""
    runs, rows = {}, []
    for model_name, (build, iterations) in models.items():
        for seed in seeds:
            for method in METHODS:
                torch.manual_seed(seed)
                m = make_method(
                    method, functools.partial(build, seed=seed), gamma=GAMMA, adam_lr=ADAM_LR
                )
                trace = train(m, iterations, eval_every)
                runs[model_name, method, seed] = trace
                for r in trace:
                    rows.append({"model": model_name, "method": method, "seed": seed, **r})
    return rows, runs


def summarize(runs: dict, num_data: dict, seeds: list[int]) -> list[dict]:
    """One row per (model, method): medians over seeds, ratios to natvi-ngd."""
    out = []
    for model_name in num_data:
        N = num_data[model_name]
        per_seed = {}
        for seed in seeds:
            best = max(
                max(r["elbo"] for r in runs[model_name, m, seed] if math.isfinite(r["elbo"]))
                for m in METHODS
            )
            for m in METHODS:
                per_seed[m, seed] = time_to_target(runs[model_name, m, seed], best - TOL * N)
        for m in METHODS:
            traces = [runs[model_name, m, s] for s in seeds]
            its = [per_seed[m, s][0] for s in seeds]
            secs = [per_seed[m, s][1] for s in seeds]
            ratios = [per_seed[m, s][1] / per_seed["natvi-ngd", s][1] for s in seeds]
            per_it = [t[-1]["time"] / max(len(t) - 1, 1) for t in traces]
            out.append(
                {
                    "model": model_name,
                    "method": m,
                    "final_elbo_per_datum": statistics.median(t[-1]["elbo"] / N for t in traces),
                    "final_heldout_lpd": statistics.median(t[-1]["heldout"] for t in traces),
                    "iters_to_target": statistics.median(its),
                    "time_to_target_s": statistics.median(secs),
                    "time_to_target_min_s": min(secs),
                    "time_to_target_max_s": max(secs),
                    "time_ratio_vs_natvi_ngd": statistics.median(ratios),
                    "ms_per_iter": 1e3 * statistics.median(per_it),
                    "failures": sum(bool(t[-1]["failed"]) for t in traces),
                }
            )
    return out


def plot(runs: dict, num_data: dict, seeds: list[int], path) -> None:
    fig, axes = plt.subplots(len(num_data), 3, figsize=(15, 4 * len(num_data)), squeeze=False)
    for row, model_name in enumerate(num_data):
        N = num_data[model_name]
        best = {
            s: max(max(r["elbo"] for r in runs[model_name, m, s]) for m in METHODS) for s in seeds
        }
        for m in METHODS:
            for i, s in enumerate(seeds):
                trace = runs[model_name, m, s]
                gap = [max((best[s] - r["elbo"]) / N, 1e-7) for r in trace]
                label = m if i == 0 else None
                color = f"C{METHODS.index(m)}"
                axes[row, 0].semilogy(
                    [r["time"] for r in trace], gap, color=color, label=label, lw=1
                )
                axes[row, 1].semilogy(
                    [r["iteration"] for r in trace], gap, color=color, label=label, lw=1
                )
                held = [(r["time"], r["heldout"]) for r in trace if math.isfinite(r["heldout"])]
                axes[row, 2].plot(*zip(*held), color=color, label=label, lw=1, marker=".")
        for ax in axes[row, :2]:
            ax.axhline(TOL, color="k", ls=":", lw=1)
            ax.set_ylabel("(best ELBO − ELBO) / N")
        axes[row, 0].set_xlabel("wall-clock [s]")
        axes[row, 1].set_xlabel("iteration")
        axes[row, 2].set_xlabel("wall-clock [s]")
        axes[row, 2].set_ylabel("held-out log predictive density")
        axes[row, 0].set_title(f"{model_name}: ELBO gap vs time (one line per seed)")
        axes[row, 1].set_title(f"{model_name}: ELBO gap vs iteration")
        axes[row, 2].set_title(f"{model_name}: held-out LPD vs time")
        axes[row, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    p = _common.parser(NAME, __doc__.splitlines()[0], threads=True)
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (3 full, 1 quick)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = QUICK if args.quick else FULL
    seeds = [args.seed + i for i in range(args.seeds or (1 if args.quick else 3))]
    eval_every = 10 if args.quick else 25
    d = _common.out_dir(args, NAME)
    rows, runs = run(models, seeds, eval_every)
    num_data = {m: models[m][0](seed=seeds[0]).num_data for m in models}
    summary = summarize(runs, num_data, seeds)
    _common.write_csv(d / "traces.csv", rows)
    _common.write_csv(d / "summary.csv", summary)
    plot(runs, num_data, seeds, d / "wallclock.png")
    notes = [
        gpflow_status(),
        f"Target: within {TOL} nats per datum of the best ELBO any method reached (per model and "
        "seed). `inf`: not reached within the iteration budget (ratios are then lower bounds).",
        "The machine is shared with other jobs: absolute times are noisy; ratios come from "
        "runs side by side in one process.",
    ]
    settings = {
        "quick": args.quick,
        "seeds": seeds,
        "iterations": {m: models[m][1] for m in models},
        "num_data (train)": num_data,
        "natural-gradient warm-up (γ0, γ1, K)": GAMMA,
        "Adam lr (hyperparameters; everything for Adam-only)": ADAM_LR,
        "held-out evaluated every": eval_every,
        "kernel": "ARD RBF × scale, same initial hyperparameters and k-means Z for every method",
    }
    _common.write_report(
        d / "README.md",
        "Wall-clock: natural gradients vs Adam, natvi vs GPyTorch",
        f"python -m benchmarks {NAME}" + (" --quick" if args.quick else ""),
        settings,
        {"Time to target and final values (medians over seeds)": summary},
        notes="\n\n".join(notes),
    )
    print(_common.markdown_table(summary))
    return 0
