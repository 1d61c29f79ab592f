"""Time to a converged model: natvi's defaults vs an Adam learning-rate grid vs GPyTorch NGD.

Per data set (breast cancer; two moons, N = 4000; digits, 10-class softmax; an ill-conditioned
regression: 500 points, known noise variance 1e-3, kernel hyperparameters learned) every method
starts from the same data, ARD kernel, k-means inducing inputs and initial hyperparameters
(:mod:`models`) and trains full-batch for a stated wall-clock budget:

- ``natvi-ngd``: natvi's default (``natvi.estimators.TRAINING_DEFAULTS``): natural steps on q
  with γ from 1e-4 to ``natgrad_lr`` (1 for the conjugate Gaussian likelihood, else 0.5) over
  ``warmup_iter`` iterations, then one L-BFGS step per iteration on the hyperparameters whose
  trial points each get a natural step on q (``natvi.optim.lbfgs.AlternatingLBFGS``);
- ``natvi-ngd-adam``: the same natural steps (γ 0.5) + Adam at the estimators'
  ``learning_rate`` on the hyperparameters (the previous default);
- ``natvi-ngd-hyper0.3``: the same natural steps, Adam 0.3 on the hyperparameters (what a
  larger hyperparameter step buys while q is kept near its optimum);
- ``natvi-adam-<lr>``: Adam on everything (q in mean/Cholesky coordinates), lr over a grid
  0.003–0.3;
- ``gpytorch-ngd``: GPyTorch's ``NGD`` with the same γ schedule and Adam lr (not for softmax).

GPflow's peer (:mod:`benchmarks._gpflow_peer`) measures step cost with fixed hyperparameters
only; it is not a time-to-model peer and is not run here.

Targets, per data set: the ELBO within ``1e-3`` nats per datum of the best final ELBO of any
method, and the held-out log-loss (negative log predictive density per test point) within
``0.005`` of the lowest final one; a run reaches a target when it enters it and stays there to
the end of its budget (a value passed through during an oscillation does not count, neither as
reference nor as reached). Reported: seconds to each (``inf``: never within the budget), and the
ratio of each method's time to natvi-ngd's for the later of the two.

Run: ``python -m benchmarks wallclock [--quick] [--datasets a,b] [--budget-scale s]``.
"""

from __future__ import annotations

import functools
import math
import time

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import _common  # noqa: E402
from benchmarks._gp_peers import make_method  # noqa: E402
from models import breast_cancer, digits_softmax, ill_conditioned, two_moons  # noqa: E402
from natvi.estimators import TRAINING_DEFAULTS  # noqa: E402

NAME = "wallclock"
ELBO_TOL = 1e-3  # nats per datum
LOSS_TOL = 0.005  # nats per test point
ADAM_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)
GAMMA = (1e-4, 0.5, TRAINING_DEFAULTS["warmup_iter"])  # natgrad_lr=None: 0.5 (non-conjugate)
HYPER_LR = TRAINING_DEFAULTS["learning_rate"]
FAST_HYPER_LR = 0.3  # natvi-ngd-hyper0.3: the default natural steps with a larger hyperparameter step


def _ill_conditioned(seed: int, **kw):
    """models.ill_conditioned (known noise 1e-3) with the kernel's hyperparameters learned."""
    problem = ill_conditioned.build(seed=seed, noise=1e-3, num_data=500, **kw)
    for name, p in problem.model.named_parameters():
        if name.startswith("kernel."):
            p.requires_grad_(True)
    return problem


# name: (builder, budget in seconds, iteration cap, held-out evaluation every k iterations)
FULL = {
    "breast_cancer": (functools.partial(breast_cancer.build, num_inducing=50), 30, 3000, 10),
    "two_moons": (functools.partial(two_moons.build, num_data=4000, num_inducing=50), 60, 3000,
                  10),
    "digits": (functools.partial(digits_softmax.build, num_inducing=50), 120, 2000, 20),
    "ill_conditioned": (_ill_conditioned, 30, 5000, 10),
}
QUICK = {
    "breast_cancer": (functools.partial(breast_cancer.build, num_inducing=15), 2, 150, 10),
    "ill_conditioned": (functools.partial(_ill_conditioned, num_inducing=10), 2, 150, 10),
}


def methods(dataset: str) -> list[str]:
    out = ["natvi-ngd", "natvi-ngd-adam", f"natvi-ngd-hyper{FAST_HYPER_LR:g}"]
    out += [f"natvi-adam-{lr:g}" for lr in ADAM_GRID]
    return out if dataset == "digits" else out + ["gpytorch-ngd"]


def _make(name: str, build):
    if name.startswith("natvi-ngd-hyper"):
        return make_method("natvi-ngd", build, gamma=GAMMA, adam_lr=FAST_HYPER_LR)
    if name.startswith("natvi-adam-"):
        return make_method("natvi-adam", build, adam_lr=float(name.rsplit("-", 1)[1]))
    if name == "natvi-ngd":  # the estimators' default: L-BFGS on the hyperparameters
        return make_method(name, build, gamma=(1e-4, TRAINING_DEFAULTS["natgrad_lr"], GAMMA[2]),
                           hyper=TRAINING_DEFAULTS["hyper_optimizer"])
    if name == "natvi-ngd-adam":  # the same natural steps, Adam on the hyperparameters
        return make_method("natvi-ngd", build, gamma=GAMMA, adam_lr=HYPER_LR)
    return make_method(name, build, gamma=GAMMA, adam_lr=HYPER_LR)


def run_one(method, budget: float, cap: int, every: int) -> list[dict]:
    """Steps until ``budget`` seconds of training (evaluation excluded) or ``cap`` iterations;
    a row per iteration: ELBO before the step, seconds so far, held-out log-loss every
    ``every`` iterations (nan elsewhere). A failure ends the run."""
    rows, elapsed = [], 0.0
    for it in range(cap):
        loss = -method.heldout() if it % every == 0 else math.nan
        t0 = time.perf_counter()
        try:
            elbo, failed = method.step(), ""
        except Exception as err:  # noqa: BLE001 - a failing method is a result
            elbo, failed = math.nan, type(err).__name__
        elapsed += time.perf_counter() - t0
        if not failed and not math.isfinite(elbo):
            failed = "non-finite ELBO"
        rows.append({"iteration": it, "time": elapsed, "elbo": elbo, "heldout": loss,
                     "failed": failed})
        if failed or elapsed > budget:
            break
    if not rows[-1]["failed"]:
        rows[-1]["heldout"] = -method.heldout()
    return rows


def settled_time(rows: list[dict], key: str, ok) -> float:
    """Seconds until ``key`` is within the target and stays there to the end of the run (the
    first evaluated row after the last one outside it); ``inf`` if the run ends outside."""
    seen = [r for r in rows if math.isfinite(r[key])]
    if not seen or not ok(seen[-1][key]):
        return math.inf
    t = seen[-1]["time"]
    for r in reversed(seen):
        if not ok(r[key]):
            break
        t = r["time"]
    return t


def summarize(dataset: str, runs: dict, num_data: int, budget: float) -> list[dict]:
    """One row per method. The references are the best *final* ELBO and the lowest *final*
    held-out log-loss over the methods (a value a method passed through and left again — an
    oscillation — is not a model anyone gets), and a target counts as reached once the run
    stays within it to the end."""
    finals = [t[-1] for t in runs.values() if not t[-1]["failed"]]
    best_elbo = max(r["elbo"] for r in finals)
    best_loss = min(r["heldout"] for r in finals)
    out = []
    for name, trace in runs.items():
        t_elbo = settled_time(trace, "elbo", lambda e: e >= best_elbo - ELBO_TOL * num_data)
        t_loss = settled_time(trace, "heldout", lambda v: v <= best_loss + LOSS_TOL)
        out.append({
            "model": dataset,
            "method": name,
            "time_to_elbo_s": t_elbo,
            "time_to_logloss_s": t_loss,
            "time_to_target_s": max(t_elbo, t_loss),
            "iterations": len(trace),
            "ms_per_iter": 1e3 * trace[-1]["time"] / len(trace),
            "final_elbo_per_datum": trace[-1]["elbo"] / num_data,
            "final_logloss": trace[-1]["heldout"],
            "budget_s": budget,
            "failed": trace[-1]["failed"],
        })
    ref = next(r["time_to_target_s"] for r in out if r["method"] == "natvi-ngd")
    for r in out:
        r["time_ratio_vs_natvi_ngd"] = r["time_to_target_s"] / ref if math.isfinite(ref) else math.nan
    return out


def plot(all_runs: dict, num_data: dict, path) -> None:
    names = list(all_runs)
    fig, axes = plt.subplots(len(names), 2, figsize=(12, 3.6 * len(names)), squeeze=False)
    for row, dataset in enumerate(names):
        runs, N = all_runs[dataset], num_data[dataset]
        best = max(r["elbo"] for t in runs.values() for r in t if math.isfinite(r["elbo"]))
        for i, (name, trace) in enumerate(runs.items()):
            style = {"color": f"C{i}", "lw": 2.2 if name == "natvi-ngd" else 1.2, "label": name}
            ok = [r for r in trace if math.isfinite(r["elbo"])]
            axes[row, 0].semilogy([r["time"] for r in ok],
                                  [max((best - r["elbo"]) / N, 1e-7) for r in ok], **style)
            held = [(r["time"], r["heldout"]) for r in trace if math.isfinite(r["heldout"])]
            if held:
                axes[row, 1].plot(*zip(*held), **style)
        axes[row, 0].axhline(ELBO_TOL, color="k", ls=":", lw=1)
        losses = [r["heldout"] for t in runs.values() for r in t if math.isfinite(r["heldout"])]
        lo = min(losses)
        axes[row, 1].set_ylim(lo - 0.01, lo + max(0.1, 4 * LOSS_TOL))
        axes[row, 1].axhline(lo + LOSS_TOL, color="k", ls=":", lw=1)
        axes[row, 0].set_ylabel("(best ELBO − ELBO) / N")
        axes[row, 1].set_ylabel("held-out log-loss")
        axes[row, 0].set_title(f"{dataset}: ELBO gap vs wall-clock", fontsize=10)
        axes[row, 1].set_title(f"{dataset}: held-out log-loss vs wall-clock", fontsize=10)
        for ax in axes[row]:
            ax.set_xlabel("wall-clock (s)")
            ax.grid(alpha=0.3)
        axes[row, 0].legend(fontsize=7)
    fig.tight_layout()
    _common.save_figure(fig, path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    p = _common.parser(NAME, __doc__.splitlines()[0], threads=True)
    p.add_argument("--datasets", default=None, help="comma-separated subset of the data sets")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiply every wall-clock budget (default 1)")
    args = p.parse_args(argv)
    table = QUICK if args.quick else FULL
    chosen = args.datasets.split(",") if args.datasets else list(table)
    unknown = [d for d in chosen if d not in table]
    if unknown:
        p.error(f"unknown data set(s) {unknown}; choose from {list(table)}")
    if args.budget_scale <= 0:
        p.error(f"--budget-scale must be positive, got {args.budget_scale}")
    torch.set_num_threads(args.threads)
    d = _common.out_dir(args, NAME)
    traces, summary, all_runs, num_data = [], [], {}, {}
    for dataset in chosen:
        build, budget, cap, every = table[dataset]
        budget *= args.budget_scale
        build = functools.partial(build, seed=args.seed)
        runs = {}
        for name in methods(dataset):
            torch.manual_seed(args.seed)
            print(f"{dataset}: {name} ...", flush=True)
            runs[name] = run_one(_make(name, build), budget, cap, every)
            traces += [{"model": dataset, "method": name, "seed": args.seed, **r}
                       for r in runs[name]]
        num_data[dataset] = build().num_data
        all_runs[dataset] = runs
        summary += summarize(dataset, runs, num_data[dataset], budget)
    _common.write_csv(d / "traces.csv", traces)
    _common.write_csv(d / "summary.csv", summary)
    plot(all_runs, num_data, d / "wallclock.png")
    settings = {
        "quick": args.quick,
        "seed": args.seed,
        "budgets (s, training time per method)": {k: table[k][1] * args.budget_scale
                                                  for k in chosen},
        "iteration caps": {k: table[k][2] for k in chosen},
        "num_data (train)": num_data,
        "natvi-ngd and gpytorch-ngd: γ warm-up (γ0, γ1, K), hyperparameter Adam lr":
            (GAMMA, HYPER_LR),
        "Adam-only lr grid": ADAM_GRID,
        "targets": f"ELBO within {ELBO_TOL} nats/datum of the best final ELBO, held-out "
                   f"log-loss within {LOSS_TOL} of the lowest final one (over all methods of the "
                   "data set), entered and kept to the end of the budget",
    }
    notes = ("`inf`: the target was never reached within the budget (ratios are then lower "
             "bounds). One process, methods one after another on a shared machine: absolute "
             "times are noisy, ratios less so. GPflow's peer measures step cost only (fixed "
             "hyperparameters) and is not run here.")
    _common.write_report(
        d / "README.md",
        "Time to a converged model: natvi's defaults vs Adam vs GPyTorch NGD",
        f"python -m benchmarks {NAME}" + (" --quick" if args.quick else ""),
        settings,
        {"Time to target": summary},
        notes=notes,
    )
    print(_common.markdown_table(summary))
    return 0
