"""Stability of natural steps: failures (NaN, exceptions) over a grid, natvi vs GPyTorch NGD.

Grid: γ ∈ {0.01, 0.1, 0.5, 1} (constant, no warm-up) × parameterisation × whitened or not ×
float32/float64 × likelihood (Bernoulli on two moons, Gaussian, Poisson counts, Student-t with
outliers). Every run starts q at the prior, keeps the hyperparameters fixed and takes
``iterations`` natural steps on the full data. A run *fails* if a step raises or the ELBO becomes
non-finite. natvi runs with its default safeguard (back-off); its interventions are counted as
``events``; it is called as ``opt.step(closure)`` (``--no-closure``: ``opt.step()``, so only
q's validity is checked, not the loss). GPyTorch NGD runs with ``NaturalVariationalDistribution`` and
``TrilNaturalVariationalDistribution``, ``VariationalStrategy`` (whitened) and
``UnwhitenedVariationalStrategy``.

Run: ``python -m benchmarks stability [--quick]``.
"""

from __future__ import annotations

import functools
import math
import warnings

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import _common  # noqa: E402
from benchmarks._gp_peers import Method, gpytorch_method, train  # noqa: E402
from models import ill_conditioned, poisson_counts, robust_regression, two_moons  # noqa: E402
from natvi import parameterizations as P  # noqa: E402

NAME = "stability"
SMALL = {"num_data": 250, "num_inducing": 20, "learn_inducing": False}
BUILDERS = {
    "bernoulli": functools.partial(two_moons.build, **SMALL),
    "gaussian": functools.partial(ill_conditioned.build, num_data=200, noise=1e-2),
    "poisson": functools.partial(poisson_counts.build, **SMALL),
    "studentt": functools.partial(robust_regression.build, **SMALL),
}
NATVI_PARAMS = {
    "Natural": P.Natural,
    "Expectation": P.Expectation,
    "MeanCholesky": P.MeanCholesky,
    "NaturalTril": P.NaturalTril,
    "DiagNatural": P.DiagNatural,
    "DiagExpectation": P.DiagExpectation,
    "DiagMeanLogScale": P.DiagMeanLogScale,
}
GPYTORCH_DISTS = ("natural", "tril_natural")
FULL = {
    "gammas": [0.01, 0.1, 0.5, 1.0],
    "natvi": list(NATVI_PARAMS),
    "gpytorch": list(GPYTORCH_DISTS),
    "likelihoods": list(BUILDERS),
    "dtypes": ["float32", "float64"],
    "iterations": 10,
}
QUICK = {
    "gammas": [0.1, 1.0],
    "natvi": ["Natural", "MeanCholesky"],
    "gpytorch": ["natural"],
    "likelihoods": ["bernoulli", "poisson"],
    "dtypes": ["float32", "float64"],
    "iterations": 4,
}


def _outcome(method: Method, iters: int) -> dict:
    """Run ``iters`` rows of :func:`train`; the last row's ELBO is the final one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trace = train(method, iters)
    return {
        "failed": trace[-1]["failed"],
        "initial_elbo": trace[0]["elbo"],
        "final_elbo": trace[-1]["elbo"],
    }


def natvi_run(
    likelihood: str,
    param: str,
    whiten: bool,
    dtype,
    gamma: float,
    iters: int,
    closure: bool = True,
) -> dict:
    """natvi's NaturalGradient (default safeguard) at constant γ on q, hyperparameters fixed.

    With ``closure`` the optimiser gets ``step(closure)`` and can re-evaluate the loss after a
    proposal (its documented use outside natural coordinates); without, only q's validity
    is checked."""
    from natvi.optim import NaturalGradient

    parameterization = NATVI_PARAMS[param]()
    problem = BUILDERS[likelihood](dtype=dtype, whiten=whiten, parameterization=parameterization)
    model, X, y = problem.model, problem.X, problem.y
    opt = NaturalGradient.for_model(model, lr=gamma)

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = -model.elbo(X, y)
        value.backward()
        return value

    def step() -> float:
        if closure:
            return -float(opt.step(loss).detach())
        value = loss()
        opt.step()
        return -float(value.detach())

    out = _outcome(Method("natvi", step, lambda: math.nan, model), iters)
    return {**out, "events": len(opt.events)}


def gpytorch_run(likelihood: str, dist: str, whiten: bool, dtype, gamma: float, iters: int) -> dict:
    """GPyTorch's NGD at constant γ on q, hyperparameters fixed."""
    problem = BUILDERS[likelihood](dtype=dtype)
    m = gpytorch_method(
        problem,
        "ngd",
        gamma=(gamma, gamma, 1),
        whiten=whiten,
        distribution=dist,
        learn_hyperparameters=False,
    )
    return {**_outcome(m, iters), "events": 0}


def run(grid: dict, closure: bool) -> list[dict]:
    rows = []
    for lik in grid["likelihoods"]:
        for dt in grid["dtypes"]:
            dtype = getattr(torch, dt)
            for whiten in (True, False):
                for gamma in grid["gammas"]:
                    natvi = functools.partial(natvi_run, closure=closure)
                    cases = [("natvi", p, natvi) for p in grid["natvi"]]
                    cases += [("gpytorch", d, gpytorch_run) for d in grid["gpytorch"]]
                    for library, param, fn in cases:
                        out = fn(lik, param, whiten, dtype, gamma, grid["iterations"])
                        rows.append(
                            {
                                "library": library,
                                "parameterization": param,
                                "likelihood": lik,
                                "dtype": dt,
                                "whiten": whiten,
                                "gamma": gamma,
                                **out,
                                "decreased": bool(out["final_elbo"] < out["initial_elbo"]),
                            }
                        )
    return rows


def summarize(rows: list[dict], by: tuple[str, ...]) -> list[dict]:
    """Failure counts grouped by the keys ``by``."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, rs in groups.items():
        out.append(
            {
                **dict(zip(by, key)),
                "runs": len(rs),
                "failures": sum(bool(r["failed"]) for r in rs),
                "ELBO decreased": sum(r["decreased"] and not r["failed"] for r in rs),
                "safeguard events": sum(r["events"] for r in rs),
                "failure kinds": ", ".join(sorted({r["failed"] for r in rs if r["failed"]})) or "-",
            }
        )
    return out


def plot(rows: list[dict], gammas: list[float], path) -> None:
    labels = list(dict.fromkeys(f"{r['library']}:{r['parameterization']}" for r in rows))
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    fig, axes = plt.subplots(
        1, len(dtypes), figsize=(6 * len(dtypes), 0.45 * len(labels) + 2), squeeze=False
    )
    for ax, dt in zip(axes[0], dtypes):
        frac = np.zeros((len(labels), len(gammas)))
        for i, lab in enumerate(labels):
            for j, g in enumerate(gammas):
                rs = [
                    r
                    for r in rows
                    if f"{r['library']}:{r['parameterization']}" == lab
                    and r["gamma"] == g
                    and r["dtype"] == dt
                ]
                frac[i, j] = np.mean([bool(r["failed"]) for r in rs]) if rs else np.nan
        im = ax.imshow(frac, vmin=0, vmax=1, cmap="Reds", aspect="auto")
        for i in range(len(labels)):
            for j in range(len(gammas)):
                ax.text(j, i, f"{frac[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(gammas)), [str(g) for g in gammas])
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("γ")
        ax.set_title(f"failure fraction, {dt} (over likelihoods × whitening)")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    _common.save_figure(fig, path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    p = _common.parser(NAME, __doc__.splitlines()[0], threads=True)
    p.add_argument(
        "--no-closure", action="store_true", help="call natvi's step() without a closure"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    grid = QUICK if args.quick else FULL
    rows = run(grid, closure=not args.no_closure)
    d = _common.out_dir(args, NAME)
    _common.write_csv(d / "runs.csv", rows)
    plot(rows, grid["gammas"], d / "stability.png")
    by_library = summarize(rows, ("library", "likelihood", "dtype", "whiten"))
    by_gamma = summarize(rows, ("library", "gamma"))
    notes = "\n\n".join(
        [
            "GPflow is not part of this benchmark (its NaturalGradient peer is timed per step by "
            "`step_cost`).",
            "A failure is an exception or a non-finite ELBO within the run. `ELBO decreased`: the "
            "run finished but below its initial ELBO (not a failure). natvi's safeguard events are "
            "steps it shrank or skipped to keep q valid (back-off).",
        ]
    )
    _common.write_report(
        d / "README.md",
        "Stability of natural steps: natvi vs GPyTorch NGD",
        f"python -m benchmarks {NAME}" + (" --quick" if args.quick else ""),
        {
            "quick": args.quick,
            "grid": grid,
            "seed": args.seed,
            "problems": "N≈200, M=20, fixed hyperparameters, q from the prior, constant γ",
        },
        {
            "Failures by library, γ": by_gamma,
            "Failures by library, likelihood, dtype, whitening": by_library,
        },
        notes=notes,
    )
    print(_common.markdown_table(by_gamma))
    return 0
