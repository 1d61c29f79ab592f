# %% [markdown]
# # Natural-gradient SVI for Pyro models
#
# `natvi.pyro.NaturalSVI` is a drop-in for `pyro.infer.SVI`: same model, same guide, same
# ELBO, `step(*args)` returns the loss. The difference is the update of the guide's Gaussian
# `q = N(m, S)`: instead of Adam on its parameters, a natural-gradient step
# `θ ← θ − γ ∇_η L` in q's natural parameters θ (η the expectation parameters), computed by
# natvi from the very gradients Pyro's ELBO leaves on the guide's stored params.
#
# We fit Bayesian logistic regression on two data sets and compare both optimisers with a NUTS
# reference posterior from Pyro itself:
#
# 1. scikit-learn's breast-cancer data (standardised, intercept added);
# 2. a generated ill-conditioned variant: features sharing one latent factor, feature
#    covariance condition number ≥ 10⁴ — a long, thin posterior.
#
# Run: `python tutorials/pyro_natural_svi.py [--quick] [--out DIR]` (or set
# `NATVI_TUTORIAL_OUT`); the plots go to `DIR` (default `results/tutorials/pyro_natural_svi`).

# %%
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402
from pyro.infer.autoguide import AutoMultivariateNormal  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models import bayesian_logistic  # noqa: E402
from natvi.pyro import NaturalSVI  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--quick", action="store_true", help="small settings (≈ 30 s)")
parser.add_argument("--out", default=os.environ.get("NATVI_TUTORIAL_OUT"))
args, _ = parser.parse_known_args()
QUICK = args.quick or os.environ.get("NATVI_TUTORIAL_QUICK") == "1"
OUT = Path(args.out or "results/tutorials/pyro_natural_svi")
OUT.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)  # small problems: extra threads only add overhead
torch.set_default_dtype(torch.float64)

S = (
    {"nuts": (150, 100), "natural_steps": 30, "adam_steps": 250, "particles": 16, "features": 5}
    if QUICK
    else {"nuts": (1500, 500), "natural_steps": 300, "adam_steps": 3000, "particles": 16,
          "features": None}
)

# %% [markdown]
# ## The data and the reference posterior
#
# `models.bayesian_logistic` builds both problems and runs Pyro's NUTS (dense mass matrix) on the
# same log-joint. In quick mode the breast-cancer problem keeps only its first few features.

# %%
problems = [
    bayesian_logistic.breast_cancer(num_features=S["features"]),
    bayesian_logistic.ill_conditioned(num_data=300 if QUICK else 500),
]
references = {}
for problem in problems:
    t0 = time.perf_counter()
    draws = bayesian_logistic.nuts_reference(problem, *S["nuts"], seed=0)
    references[problem.name] = draws
    print(
        f"{problem.name}: N={problem.X.shape[0]}, D={problem.X.shape[1]}, "
        f"cond(XᵀX/N)={problem.condition_number:.3g}, NUTS {time.perf_counter() - t0:.1f} s"
    )

# %% [markdown]
# ## Fitting: NaturalSVI vs Adam SVI
#
# Same guide (`AutoMultivariateNormal`), same `Trace_ELBO` with vectorised particles, same seed.
# NaturalSVI takes γ = 0.5 for ten steps, then 0.25 (a smaller γ averages the Monte Carlo noise of
# the ELBO gradient); Adam takes its usual learning rate 0.05. We record the loss (−ELBO
# estimate), the wall-clock time, and the distance of q to the NUTS posterior: the largest error
# of a posterior mean in units of its NUTS standard deviation.


# %%
def fit(problem, method: str, steps: int):
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    guide = AutoMultivariateNormal(problem.model)
    loss = Trace_ELBO(num_particles=S["particles"], vectorize_particles=True, max_plate_nesting=1)
    if method == "natural":
        svi = NaturalSVI(problem.model, guide, lr=lambda t: 0.5 if t < 10 else 0.25, loss=loss)
    else:
        svi = SVI(problem.model, guide, pyro.optim.Adam({"lr": 0.05}), loss)
    draws = references[problem.name]
    mu, sd = draws.mean(0), draws.std(0)
    history = {"loss": [], "time": [], "mean_err": []}
    t0 = time.perf_counter()
    for _ in range(steps):
        history["loss"].append(svi.step(problem.X, problem.y))
        history["time"].append(time.perf_counter() - t0)
        with torch.no_grad():
            q = guide.get_posterior()
            history["mean_err"].append(float(((q.mean - mu).abs() / sd).max()))
    with torch.no_grad():
        q = guide.get_posterior()
        return history, q.mean.clone(), q.covariance_matrix.diagonal().sqrt().clone()


def first_below(errors, tol=0.25):
    return next((i + 1 for i, e in enumerate(errors) if e < tol), None)


results = {}
for problem in problems:
    for method, steps in (("natural", S["natural_steps"]), ("adam", S["adam_steps"])):
        results[problem.name, method] = fit(problem, method, steps)

# %% [markdown]
# ## Results
#
# Steps to bring every posterior mean within 0.25 NUTS standard deviations, and the final
# errors. (Timings are single runs on a shared, loaded machine: read them as rough.)

# %%
rows = ["| problem | method | steps | steps to 0.25 sd | final mean err (sd) | sd ratio range | time (s) |",
        "|---|---|---|---|---|---|---|"]
for problem in problems:
    sd_nuts = references[problem.name].std(0)
    for method in ("natural", "adam"):
        hist, mean, sd = results[problem.name, method]
        ratio = sd / sd_nuts
        rows.append(
            f"| {problem.name} | {method} | {len(hist['loss'])} | {first_below(hist['mean_err'])} "
            f"| {hist['mean_err'][-1]:.3f} | {ratio.min():.2f}–{ratio.max():.2f} "
            f"| {hist['time'][-1]:.1f} |"
        )
table = "\n".join(rows)
print(table)
(OUT / "summary.md").write_text(table + "\n")

# %% [markdown]
# ## Plots: −ELBO against steps and against wall-clock, and posterior marginals

# %%
fig, axes = plt.subplots(len(problems), 3, figsize=(15, 4.2 * len(problems)), squeeze=False)
for row, problem in zip(axes, problems):
    for method, colour in (("natural", "C0"), ("adam", "C1")):
        hist = results[problem.name, method][0]
        row[0].plot(range(1, len(hist["loss"]) + 1), hist["loss"], colour, label=method)
        row[1].plot(hist["time"], hist["loss"], colour, label=method)
        row[2].semilogy(range(1, len(hist["mean_err"]) + 1), hist["mean_err"], colour, label=method)
    floor = min(min(results[problem.name, m][0]["loss"]) for m in ("natural", "adam"))
    for ax in row[:2]:
        ax.set_ylim(floor - 0.05 * abs(floor) - 5, floor + 0.5 * abs(floor) + 50)
        ax.set_ylabel("−ELBO (MC estimate)")
    row[0].set_xscale("log")
    row[0].set_xlabel("step")
    row[1].set_xlabel("wall-clock (s)")
    row[2].set_xlabel("step")
    row[2].set_ylabel("max |mean − NUTS mean| / NUTS sd")
    row[0].set_title(problem.name)
    for ax in row:
        ax.legend()
fig.tight_layout()
fig.savefig(OUT / "elbo.png", dpi=110)

fig, axes = plt.subplots(len(problems), 4, figsize=(15, 3.6 * len(problems)), squeeze=False)
for row, problem in zip(axes, problems):
    draws = references[problem.name]
    for k, ax in enumerate(row):
        j = k if k < 3 else draws.shape[1] - 1  # three weights and the intercept
        ax.hist(draws[:, j].numpy(), bins=40, density=True, color="0.8", label="NUTS")
        grid = torch.linspace(float(draws[:, j].min()), float(draws[:, j].max()), 200)
        for method, colour in (("natural", "C0"), ("adam", "C1")):
            _, mean, sd = results[problem.name, method]
            density = torch.distributions.Normal(mean[j], sd[j]).log_prob(grid).exp()
            ax.plot(grid.numpy(), density.numpy(), colour, label=method)
        ax.set_title(f"{problem.name}: w[{j}]")
    row[0].legend()
fig.tight_layout()
fig.savefig(OUT / "marginals.png", dpi=110)
print(f"plots written to {OUT}")

# %% [markdown]
# **Reading the plots.** On both problems NaturalSVI brings q to the NUTS posterior in tens of
# steps; Adam needs hundreds to thousands, and is slowest on the ill-conditioned problem, where
# the posterior's long axis is ~100× its short one and a per-coordinate step size cannot follow
# it. Each natural step costs a little more (one extra VJP and JVP of a D-dimensional Gaussian),
# far less than the steps it saves. Where the Gaussian q and NUTS still differ, that is the
# variational approximation (the posterior is not exactly Gaussian), not the optimiser: both
# optimisers approach the same q.

# %% [markdown]
# ## From Pyro's defaults: one particle, no tuning
#
# The fits above use 16 vectorised particles and a hand-picked γ. `NaturalSVI(model, guide)`
# with nothing else — one particle, `Trace_ELBO`, as `pyro.infer.SVI`'s examples — takes a
# decaying step `γ_t = γ0 / (1 + t/t0)` (`γ0 = min(1/2, 1/D)`, `t0 = max(20, 3D)`, D the
# latent dimension; a Robbins–Monro schedule: with a constant γ the one-particle noise keeps q
# ~2% above the optimum) and checks each step on the loss with the same random draw at the old
# and the new point. The iBLR (Riemannian) correction was tried as the default and rejected:
# with one particle it made q over-confident.
#
# `python -m benchmarks pyro_svi` runs both models with an `AutoMultivariateNormal` guide, each
# of Pyro's default ELBOs with one particle, 8 seeds, until the −ELBO (estimated outside the
# timer with 1000 particles every 10 steps) is within 1% of the optimum (measured by a long
# 64-particle run; for the regression it agrees with −log p(y) by quadrature to 0.01), against
# `SVI` with `Adam({"lr": 0.01})` (at most 3000 steps). Median steps and seconds of the runs
# that converged (seconds on a shared, loaded 2-core machine: compare within a row only):
#
# | problem | ELBO, 1 particle | NaturalSVI defaults: converged | steps | seconds | SVI Adam 0.01: converged | steps | seconds |
# |---|---|---|---|---|---|---|---|
# | regression (3 latents) | Trace_ELBO | 8/8 | 45 | 1.1 | 8/8 | 325 | 8.1 |
# | regression | TraceMeanField_ELBO | 8/8 | 50 | 7.5 | 8/8 | 325 | 14.3 |
# | regression | JitTrace_ELBO | 8/8 | 50 | 3.8 | 8/8 | 325 | 4.4 |
# | breast cancer (31 weights) | Trace_ELBO | 8/8 | 1035 | 68* | 0/8 in 3000 | — | (3000 steps: 20.5) |
# | breast cancer | TraceMeanField_ELBO | 8/8 | 1035 | 71* | 0/8 in 3000 | — | (3000 steps: 21.2) |
# | breast cancer | JitTrace_ELBO | 8/8 | 1030 | 69* | 0/8 in 3000 | — | (3000 steps: 11.9) |
#
# Optima (−ELBO): regression 244.56, breast cancer 55.49. After 3000 steps Adam's −ELBO was
# still 57.3–58.1 (3–5% above). \*The breast-cancer NaturalSVI runs ran first, while the
# machine's load average was 10–13; the Adam runs ran later at a lower load, so their seconds are
# not comparable: at low load a NaturalSVI step cost ≈ 11 ms and an Adam step ≈ 2.3–4 ms (the
# natural step evaluates the loss twice more for the paired check), so on breast cancer
# NaturalSVI's time to 1% (≈ 12–15 s at low load) is about what Adam spends on 3000 steps that
# do not get there. With `AutoMultivariateNormal` Pyro's `TraceMeanField_ELBO` has no analytic
# KL to use and gives the same draws as `Trace_ELBO`, hence the identical step counts.
