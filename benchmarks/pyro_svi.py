"""Natural-gradient SVI from Pyro's defaults: ``NaturalSVI(model, guide)`` vs ``SVI`` + Adam 0.01.

Two models, each with an ``AutoMultivariateNormal`` guide and *one* particle (Pyro's default):

- ``regression`` — :mod:`models.bayesian_regression` (3 latents, 170 points);
- ``breast_cancer`` — :mod:`models.bayesian_logistic` (31 weights, 569 points).

For each ELBO of Pyro's defaults (``Trace_ELBO``, ``TraceMeanField_ELBO``, ``JitTrace_ELBO``) and
each seed, both methods run until the negative ELBO — estimated every ``check_every`` steps with
``eval_particles`` vectorised particles on a separate random stream, outside the timer — is
within 1% of the optimum, or until ``max_steps``. The optimum is measured first by a long
many-particle natural-gradient run (the best accurate estimate along it). Reported: runs that
converged, median steps and seconds of those.

``python -m benchmarks pyro_svi [--quick] [--seeds 8]``.
"""

from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO  # noqa: E402
from pyro.infer.autoguide import AutoMultivariateNormal  # noqa: E402

from benchmarks import _common  # noqa: E402
from models import bayesian_logistic, bayesian_regression  # noqa: E402
from natvi.optim.schedules import Decay  # noqa: E402
from natvi.pyro import NaturalSVI  # noqa: E402

NAME = "pyro_svi"
ELBOS = {"Trace_ELBO": Trace_ELBO, "TraceMeanField_ELBO": TraceMeanField_ELBO,
         "JitTrace_ELBO": JitTrace_ELBO}


def problems(quick: bool) -> dict:
    reg = bayesian_regression.build()
    bc = bayesian_logistic.breast_cancer(num_features=8 if quick else None)
    return {"regression": (reg.model, (reg.x, reg.y)), "breast_cancer": (bc.model, (bc.X, bc.y))}


def _accurate_loss(model, guide, data, particles: int, seed: int = 12345) -> float:
    state = pyro.util.get_rng_state()
    pyro.set_rng_seed(seed)
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        value = float(elbo.loss(model, guide, *data))
    pyro.util.set_rng_state(state)
    return value


def optimum(model, data, steps: int, particles: int, eval_particles: int) -> float:
    """The best accurate −ELBO along a long many-particle NaturalSVI run."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoMultivariateNormal(model)
    loss = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    svi = NaturalSVI(model, guide, lr=Decay(0.25, 0.01), loss=loss)
    best = float("inf")
    for t in range(steps):
        svi.step(*data)
        if (t + 1) % 50 == 0:
            best = min(best, _accurate_loss(model, guide, data, eval_particles))
    return best


def run(model, data, method: str, elbo: str, seed: int, target: float, max_steps: int,
        check_every: int, eval_particles: int) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = AutoMultivariateNormal(model)
    loss = ELBOS[elbo]()
    if method == "natural":
        svi = NaturalSVI(model, guide, loss=loss)
    else:
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), loss)
    seconds, final, trace = 0.0, float("nan"), []
    for t in range(1, max_steps + 1):
        t0 = time.perf_counter()
        svi.step(*data)
        seconds += time.perf_counter() - t0
        if t % check_every == 0:
            final = _accurate_loss(model, guide, data, eval_particles)
            trace.append(f"{t}:{seconds:.2f}:{final:.3f}")
            if final <= target:
                break
    return {"converged": final <= target, "steps": t, "seconds": seconds, "final": final,
            "backoffs": getattr(svi, "num_backoffs", 0), "trace": " ".join(trace)}


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["problem"], r["elbo"], r["method"]) for r in rows},
                  key=lambda k: (k[0], list(ELBOS).index(k[1]), k[2]))
    for problem, elbo, method in keys:
        rs = [r for r in rows if (r["problem"], r["elbo"], r["method"]) == (problem, elbo, method)]
        ok = [r for r in rs if r["converged"]]
        out.append({
            "problem": problem, "ELBO (1 particle)": elbo,
            "method": "NaturalSVI defaults" if method == "natural" else "SVI Adam 0.01",
            "converged": f"{len(ok)}/{len(rs)}",
            "median steps": _common.median([r["steps"] for r in ok]) if ok else "—",
            "median seconds": round(_common.median([r["seconds"] for r in ok]), 2) if ok else "—",
        })
    return out


def main(argv: list[str]) -> int:
    p = _common.parser(NAME, __doc__.splitlines()[0], threads=True)
    p.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 8; quick 2)")
    p.add_argument("--problems", default="regression,breast_cancer", help="comma-separated")
    p.add_argument("--elbos", default=",".join(ELBOS), help="comma-separated")
    p.add_argument("--optimum", type=float, default=None,
                   help="skip the optimum run and use this −ELBO (one problem only)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    quick = args.quick
    seeds = args.seeds or (2 if quick else 8)
    max_steps = {"regression": 400 if quick else 3000, "breast_cancer": 400 if quick else 3000}
    settings = {"seeds": seeds, "max_steps": max_steps, "check_every": 10,
                "eval_particles": 200 if quick else 1000, "tolerance": "1% of |optimum|",
                "optimum": "best of a 2000-step NaturalSVI run, lr 0.25/(1 + t/100), 64 "
                           "particles, checked every 50 steps with 20000 particles",
                "threads": args.threads}
    out = _common.out_dir(args, NAME)
    rows, optima = [], {}
    chosen = args.problems.split(",")
    for name, (model, data) in problems(quick).items():
        if name not in chosen:
            continue
        opt = args.optimum
        if opt is None:
            opt = optimum(model, data, steps=300 if quick else 2000, particles=64,
                          eval_particles=2000 if quick else 20000)
        print(f"optimum {name} {opt}", flush=True)
        optima[name] = opt
        target = opt + 0.01 * abs(opt)
        for elbo in args.elbos.split(","):
            for method in ("natural", "adam"):
                for seed in range(seeds):
                    r = run(model, data, method, elbo, seed, target, max_steps[name], 10,
                            settings["eval_particles"])
                    rows.append({"problem": name, "elbo": elbo, "method": method,
                                 "seed": seed, "optimum": opt, **r})
                    print(rows[-1], flush=True)
    table = summarise(rows)
    _common.write_csv(out / "runs.csv", rows)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, name in enumerate(optima):
        for j, method in enumerate(("natural", "adam")):
            steps = [r["steps"] if r["converged"] else float("nan") for r in rows
                     if r["problem"] == name and r["method"] == method]
            ax.scatter([i + 0.2 * j - 0.1] * len(steps), steps, s=12,
                       label=f"{method}" if i == 0 else None, c=f"C{j}")
    ax.set_xticks(range(len(optima)), list(optima))
    ax.set_yscale("log")
    ax.set_ylabel("steps to within 1% of the optimum")
    ax.legend()
    _common.save_figure(fig, out / "steps.png", dpi=120, bbox_inches="tight")
    notes = "Optima (−ELBO): " + ", ".join(f"{k} {v:.2f}" for k, v in optima.items())
    cmd = "python -m benchmarks pyro_svi" + (" --quick" if quick else "")
    _common.write_report(out / "README.md", "Natural-gradient SVI from Pyro's defaults", cmd,
                         settings, {"Runs to within 1% of the optimum": table}, notes)
    print(_common.markdown_table(table))
    print(notes)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
