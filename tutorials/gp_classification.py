# %% [markdown]
# # GP classification with natural gradients
#
# A sparse variational GP classifier has two kinds of parameters: the variational distribution
# `q(u) = N(m, S)` over the inducing outputs (M + M² numbers) and a handful of hyperparameters
# (kernel, inducing inputs). The ELBO is *concave in the natural parameters of q* for a
# log-concave likelihood, and the Fisher metric of q is exactly the curvature that ordinary
# gradients ignore: a natural-gradient step rescales every direction of q by its own
# uncertainty, so q converges in a few tens of steps where Adam needs hundreds — Adam must keep
# its step small enough for the stiffest direction of `S`. This tutorial shows it on
# scikit-learn's breast-cancer data, then looks at what the estimator does for you.
#
# `NATVI_QUICK=1` runs a short version; `NATVI_TUTORIAL_OUT` names the output folder.

# %%
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import norm
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split

import natvi

QUICK = os.environ.get("NATVI_QUICK") == "1"
OUT = Path(os.environ.get("NATVI_TUTORIAL_OUT", "tutorial-output"))
OUT.mkdir(parents=True, exist_ok=True)

X, y = load_breast_cancer(return_X_y=True)
X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
M = 20 if QUICK else 50

# %% [markdown]
# ## 1. Three lines
#
# `SparseGPClassifier` standardises the inputs, puts inducing points at k-means centres, uses an
# ARD RBF kernel and trains q by natural gradients (log-linear warm-up of the step size) with
# Adam on the hyperparameters, stopping when the ELBO stops improving.

# %%
iters = 15 if QUICK else 300
clf = natvi.SparseGPClassifier(M, max_iter=iters, random_state=0).fit(X_tr, y_tr)
print(f"test accuracy {clf.score(X_te, y_te):.3f} after {clf.n_iter_} iterations")

# %% [markdown]
# ## 2. Natural gradients against Adam, same model, same data
#
# `method="adam"` trains the same model with ordinary gradients on everything (q held as mean
# and Cholesky factor, the usual choice). Keep the hyperparameters fixed for a clean look at q
# alone: set the hyperparameter learning rate tiny.

# %%
curves = {}
for method in ("natgrad", "adam"):
    est = natvi.SparseGPClassifier(M, method=method, max_iter=iters, tol=0.0, random_state=0,
                                   learning_rate=1e-6)
    est.fit(X_tr, y_tr)
    curves[method] = np.asarray(est.history_.elbo) / len(y_tr)
    print(f"{method:8s} ELBO per datum after {iters} iterations: {curves[method][-1]:.4f}")
assert curves["natgrad"][-1] > curves["adam"][-1]

fig, ax = plt.subplots(figsize=(6, 3.8))
for method, elbo in curves.items():
    ax.plot(np.arange(1, len(elbo) + 1), elbo, label=method, lw=2)
ax.set_ylim(np.percentile(np.concatenate(list(curves.values())), 10), None)
ax.set_xlabel("iteration")
ax.set_ylabel("ELBO per datum (fixed hyperparameters)")
ax.legend()
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(OUT / "gp_classification_elbo.png", dpi=110)

# %% [markdown]
# ## 3. Probabilities that account for uncertainty
#
# `predict_proba` integrates the likelihood over the posterior of f:
# `p(y=1|x) = ∫ Φ(f) q(f) df = Φ(μ / √(1 + σ²))`. Plugging in the mean, `Φ(μ)`, ignores σ and is
# over-confident where the model knows little. Compare both on the test set.
#
# Do not expect the integrated numbers to win every time: on breast cancer this model is slightly
# *under*-confident, and over 20 splits the plug-in has the lower log-loss on most of them — for
# the exact posterior of the same model as much as for natvi's q. Integrating pays off on the
# splits where the plug-in makes confident mistakes (`python -m benchmarks calibration`).

# %%
mean, var = clf.predict_latent(X_te)
print(f"log-loss, integrated over q(f): {log_loss(y_te, clf.predict_proba(X_te)[:, 1]):.4f}")
print(f"log-loss, plug-in Φ(μ):         {log_loss(y_te, norm.cdf(mean)):.4f}")
fig, ax = plt.subplots(figsize=(5, 3.8))
ax.scatter(norm.cdf(mean), clf.predict_proba(X_te)[:, 1], c=np.sqrt(var), s=12, cmap="viridis")
ax.plot([0, 1], [0, 1], "k--", lw=1)
ax.set_xlabel("plug-in Φ(μ)")
ax.set_ylabel("integrated p(y=1|x)")
ax.set_title("colour: posterior sd of f", fontsize=10)
fig.tight_layout()
fig.savefig(OUT / "gp_classification_proba.png", dpi=110)
print(f"plots written to {OUT}")
