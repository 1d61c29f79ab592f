# %% [markdown]
# # An ill-conditioned posterior where Adam stalls
#
# GP regression with densely packed, strongly correlated inputs and little noise has a posterior
# over the inducing outputs whose precision is badly conditioned: some directions of q are
# pinned down to 1e-4, others barely at all. Ordinary gradients (Adam included) take steps
# tuned to the stiffest direction and crawl along the flat ones. The natural gradient divides
# the curvature out: for this conjugate (Gaussian) model **one** natural step of size 1 lands
# on the exact optimum, whatever the conditioning. We use `models.ill_conditioned`, whose exact
# optimum (Titsias 2009) is known in closed form.
#
# `NATVI_QUICK=1` runs a short version; `NATVI_TUTORIAL_OUT` names the output folder.

# %%
from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for models/ in a source checkout
import natvi
from models import ill_conditioned
from natvi.parameterizations import MeanCholesky

QUICK = os.environ.get("NATVI_QUICK") == "1"
OUT = Path(os.environ.get("NATVI_TUTORIAL_OUT", "tutorial-output"))
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## 1. The problem and its exact optimum

# %%
settings = {"noise": 1e-3, "lengthscale": 0.5}
problem = ill_conditioned.build(**settings)
m_opt, S_opt, elbo_opt = ill_conditioned.exact_optimum(problem)
print(f"condition number of the optimal posterior precision: "
      f"{ill_conditioned.condition_number(S_opt):.3g}")
print(f"optimal ELBO: {elbo_opt.item():.4f}")

# %% [markdown]
# ## 2. One natural-gradient step, γ = 1

# %%
result = natvi.fit(problem.model, problem.X, problem.y, method="natgrad", iterations=1, lr=1.0,
                   progress=False)
with torch.no_grad():
    gap_nat = (elbo_opt - problem.model.elbo(problem.X, problem.y)).item()
print(f"ELBO gap after one natural step: {gap_nat:.2e} nats")
assert abs(gap_nat) < 1e-5

# %% [markdown]
# ## 3. Adam on the same ELBO, q held as mean and Cholesky factor

# %%
iters = 100 if QUICK else 3000
gaps = {}
for lr in (1e-3, 1e-2, 1e-1):
    adam_problem = ill_conditioned.build(**settings, parameterization=MeanCholesky())
    res = natvi.fit(adam_problem.model, adam_problem.X, adam_problem.y, method="adam",
                    iterations=iters, lr=lr, progress=False)
    gaps[lr] = [max(elbo_opt.item() - e, 1e-12) for e in res.history.elbo]
    print(f"Adam lr={lr:g}: ELBO gap after {iters} iterations: {gaps[lr][-1]:.3g} nats")
assert min(g[-1] for g in gaps.values()) > 100 * max(abs(gap_nat), 1e-8)

fig, ax = plt.subplots(figsize=(6, 3.8))
for lr, g in gaps.items():
    ax.loglog(range(1, len(g) + 1), g, label=f"Adam, lr={lr:g}", lw=2)
ax.axhline(max(abs(gap_nat), 1e-12), color="k", ls="--", label="natural gradient, 1 step")
ax.set_xlabel("iteration")
ax.set_ylabel("ELBO gap to the optimum (nats)")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(OUT / "ill_conditioned.png", dpi=110)
print(f"plot written to {OUT / 'ill_conditioned.png'}")
