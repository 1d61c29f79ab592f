# %% [markdown]
# # Solving natural-gradient systems on a thermodynamic computer
#
# Natural-gradient descent needs, at every step, the solution of a linear system
# `(F + λI) x = g`: the (damped) Fisher or GGN curvature `F` against the loss gradient `g`.
# Digitally that is a Cholesky factorisation (`O(n³)`) or some iterations of conjugate
# gradients. A *thermodynamic* co-processor — an analog circuit of coupled RC oscillators
# — does something else: it lets a physical system relax under the Ornstein–Uhlenbeck (OU)
# dynamics
#
# `dx = −(A x − b) dt + sqrt(2 κ0) dW`,
#
# whose stationary law is `N(A⁻¹b, κ0 A⁻¹)`. The *time average* of the trajectory therefore
# estimates `A⁻¹b`, its covariance estimates `A⁻¹`, and with `A = −2θ2, b = θ1, κ0 = 1` the
# trajectory samples a Gaussian given in natural parameters. `natvi.linalg.OU` simulates this
# device (exactly, or by Euler–Maruyama) and models how long the real device would take.
#
# Run as plain Python: `python tutorials/thermodynamic_solver.py [PLOT_DIR] [--quick]`
# (or set `NATVI_TUTORIAL_OUT` / `NATVI_TUTORIAL_QUICK=1`).

# %%
from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from natvi.linalg import CG, OU, Cholesky, LowRankPlusDiag
from natvi.linalg import ou_theory as theory

argv = [a for a in sys.argv[1:] if not a.startswith("--")]
QUICK = "--quick" in sys.argv or os.environ.get("NATVI_TUTORIAL_QUICK") == "1"
OUT = Path(argv[0] if argv else os.environ.get("NATVI_TUTORIAL_OUT", "results/tutorials"))
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
F64 = torch.float64

# %% [markdown]
# ## A damped curvature system
# A GGN from a minibatch of `r` examples is low rank: `F = Jᵀ J / r`. With damping `λ`, the
# system matrix is `λI + U Uᵀ` — natvi's `LowRankPlusDiag`, which every solver accepts.

# %%
n, r, damping = (60, 12, 0.05) if QUICK else (200, 40, 0.05)
g = torch.Generator().manual_seed(0)
J = torch.randn(r, n, generator=g, dtype=F64)
A_op = LowRankPlusDiag(damping, J.mT / r**0.5)
A = A_op.to_dense()
grad = torch.randn(n, generator=g, dtype=F64)
x_star = Cholesky().solve(A_op, grad).x
eig = torch.linalg.eigvalsh(A)
print(f"n={n}, λ_min={eig[0]:.3g}, λ_max={eig[-1]:.3g}, κ={eig[-1] / eig[0]:.3g}")

# %% [markdown]
# ## What the OU process does
# From `x0 = 0` the mean relaxes as `A⁻¹b + e^{−At}(x0 − A⁻¹b)`: directions with large
# eigenvalues settle within `1/λ_max`, the slow ones need `1/λ_min`. The exact method
# simulates transitions in A's eigenbasis; Euler–Maruyama only needs products `A v` but must
# keep `dt < 2/λ_max`.

# %%
dt = 0.5 / float(eig[-1])
steps = 400 if QUICK else 2000
ou = OU(dt=dt, num_samples=1, method="exact", seed=0)
states = ou.sample(grad, -0.5 * A, steps)  # the trajectory from x0 = 0, one state per dt
times = dt * torch.arange(1, steps + 1)
running = states.cumsum(0) / torch.arange(1, steps + 1, dtype=F64).unsqueeze(-1)
fig, ax = plt.subplots(figsize=(6, 3.5))
for i in range(3):
    ax.plot(times, states[:, i], lw=0.6, alpha=0.6)
    ax.plot(times, running[:, i], lw=2, color=f"C{i}")
    ax.axhline(float(x_star[i]), ls="--", color=f"C{i}")
ax.set(xlabel="analog time t [τ]", ylabel="x_i", title="trajectory (thin), running mean (thick)")
fig.tight_layout()
fig.savefig(OUT / "ou_trajectory.png", dpi=110)

# %% [markdown]
# ## The bias/variance trade-off
# After analog time `t` the time average has a *bias* `≈ (At)⁻¹(I − e^{−At})(x0 − A⁻¹b)`
# (from the start) and a *variance* `≈ 2κ0 A⁻²/t` (from the noise). Both fall like `1/t`;
# the noise κ0 only sets the variance, so a quieter device (small κ0) is limited by the bias
# and a warm start `x0` near the answer (the previous natural gradient) removes the bias.
# `natvi.linalg.ou_theory` gives the exact finite-`t` formulas, drawn as lines below.

# %%
x0 = torch.zeros(n, dtype=F64)
runs = 8 if QUICK else 32
B = grad.unsqueeze(-1).expand(n, runs).contiguous()
ts = [1.0, 10.0, 100.0] if QUICK else [1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0]
fig, ax = plt.subplots(figsize=(6, 3.5))
for kappa, warm in [(1.0, False), (0.1, False), (0.1, True)]:
    start = (x_star + 0.1 * torch.randn(n, generator=g, dtype=F64)) if warm else x0
    X0 = start.unsqueeze(-1).expand(n, runs).contiguous()
    meas, pred = [], []
    for t in ts:
        N = max(1, round(t / 0.1))
        res = OU(dt=0.1, num_samples=N, noise=kappa, method="exact", seed=1).solve(A, B, x0=X0)
        meas.append(float(((res.x - x_star.unsqueeze(-1)) ** 2).sum(0).mean().sqrt()))
        pred.append(float(theory.expected_squared_error(A, grad, start, 0.1, N, 0, kappa).sqrt()))
    label = f"κ0={kappa}" + (", warm start" if warm else "")
    (line,) = ax.loglog(ts, meas, "o", label=label)
    ax.loglog(ts, pred, "-", color=line.get_color())
ax.set(xlabel="analog time t [τ]", ylabel="RMSE of x̄", title="dots: simulated, lines: theory")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "ou_bias_variance.png", dpi=110)

# %% [markdown]
# ## When does it pay off?
# The digital simulation is *not* fast — it is the reference for a device. What matters is the
# device time: `t·τ` of analog evolution plus moving `A` and `b` over the link. With τ = 1 µs
# and 16-bit numbers at 50 Gb/s (the TNGD paper's figures), a low-rank `A` only needs its
# factor `U` (`n r` numbers), and a dense `A` needs `n²`. Below: modelled device seconds
# against the measured digital time of Cholesky and CG on this machine (shared with other jobs).

# %%
import time  # noqa: E402

rows = []
for name, solver in {
    "cholesky": Cholesky(),
    "cg": CG(tol=1e-6),
    "ou (t=100τ)": OU(dt=0.1, num_samples=1000, noise=0.1, method="exact", seed=0),
}.items():
    t0 = time.perf_counter()
    res = solver.solve(A_op, grad)
    wall = time.perf_counter() - t0
    err = float((res.x - x_star).norm() / x_star.norm())
    rows.append((name, wall, res.device_seconds, err))
    dev = f"{res.device_seconds:.2e}" if res.device_seconds else "-"
    print(f"{name:12s} digital {wall:.2e} s   device(model) {dev} s   rel. error {err:.2e}")

# %% [markdown]
# The OU estimate is approximate (its error is the bias/variance curve above), so it pays off
# when a modest accuracy suffices — as in natural-gradient descent, where the solution is a
# search direction refreshed at every step and warm-started from the previous one — and when
# `n` is large enough that the `O(n³)` or `O(n² · iterations)` digital solve dominates while
# the device time stays `t·τ + transfer`.
#
# ## Sampling without a Cholesky factor
# The same process samples `q = N(m, S)` given its natural parameters: `A = −2θ2 = S⁻¹`,
# `b = θ1 = S⁻¹m`, `κ0 = 1`.

# %%
S = torch.linalg.inv(A[:5, :5])
m = torch.arange(5, dtype=F64)
P = torch.linalg.inv(S)
draws = OU(dt=2.0 / float(torch.linalg.eigvalsh(P)[-1]), burnin=200, method="exact", seed=3)
xs = draws.sample(P @ m, -0.5 * P, 2000 if QUICK else 20000)
print("sample mean", xs.mean(0).numpy().round(2), "target", m.numpy())
print("relative covariance error", float((torch.cov(xs.T) - S).norm() / S.norm()))
plt.close("all")
print(f"plots written to {OUT}")
