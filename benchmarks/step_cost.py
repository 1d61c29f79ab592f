"""Cost of one natural-gradient step: natvi vs GPyTorch NGD vs natvi-in-GPyTorch vs GPflow.

One step is what every library's natural-gradient loop does per iteration with the
hyperparameters fixed: zero the gradients, the total ELBO on all N points, backward, and the
natural step on q (γ = 0.1). The same problem for everyone: ``make_classification`` data
(N = 3200, D = 6, standardised; 3 classes for softmax), the first M points as fixed inducing
inputs, an ARD squared-exponential kernel with lengthscales √D and variance 1, q at the prior.

Methods (each on one thread):

- ``natvi``: ``natvi.gp.SVGP`` in ``Natural()`` coordinates + ``natvi.optim.NaturalGradient``;
  with the hyperparameters and Z fixed, it keeps the factor of K_zz and the solved cross block
  ``L_zz⁻¹ K_zx`` between steps (``reuse_fixed_prior``, checked by value at every step);
- ``natvi_recomputed``: the same with ``reuse_fixed_prior = False``, recomputing the kernel
  blocks, the Cholesky of K_zz and the solve at every step as the peers do (and as every step of
  a fit that learns hyperparameters does);
- ``interop``: GPyTorch ``ApproximateGP`` with natvi's ``NatviVariationalDistribution``
  (``Natural()``) + ``NaturalGradient(num_data=N)`` on GPyTorch's ``VariationalELBO``, under
  natvi's ``NatviVariationalStrategy`` (unwhitened: ``NatviUnwhitenedVariationalStrategy``),
  which, like ``natvi``, keeps ``L_zz`` and the solved block while the prior is fixed;
- ``interop_recomputed``: the same with the strategy's ``reuse_fixed_prior = False``;
  with ``--interop-stock`` also ``interop_stock``, the same under GPyTorch's own
  ``VariationalStrategy`` / ``UnwhitenedVariationalStrategy`` (the path before natvi's);
- ``gpytorch``: GPyTorch ``NaturalVariationalDistribution`` + ``gpytorch.optim.NGD``;
- ``gpflow``: GPflow ``SVGP`` + ``NaturalGradient`` under ``tf.function``, run by
  ``benchmarks/_gpflow_peer.py`` in GPflow's own virtual environment: pass
  ``--gpflow-python PATH`` (an environment with gpflow, tensorflow-cpu and tf-keras) or
  ``--install-gpflow DIR`` (creates that environment with ``pip``; GPflow is never a natvi
  dependency). Without either, GPflow is skipped and the table says so.

Bernoulli uses the probit link with 20-point Gauss–Hermite everywhere; softmax uses 100 Monte
Carlo draws per point everywhere (natvi: 50 antithetic pairs; GPyTorch:
``num_likelihood_samples(100)``; GPflow: ``num_monte_carlo_points = 100``). Every library runs
its steps back to back, as in its own fit loop: GPflow in its subprocess, and each torch method
in a block of ``repeats`` steps in this process (``--schedule steps`` instead interleaves the
torch methods step by step, which puts another model's step, and its memory traffic, between
two steps of each). The torch blocks and GPflow's run alternate, and the pair is repeated
(``--rounds``, default 2) so that a slow spell of a shared machine falls on both. Medians of the
pooled steps after warm-up; ratios < 1 mean natvi is cheaper.

Run: ``python -m benchmarks step_cost [--quick] [--gpflow-python PATH | --install-gpflow DIR]``
(``--M``, ``--likelihood``, ``--whiten``, ``--dtype`` select part of the grid;
``--schedule steps`` interleaves the torch methods; ``--interop-stock`` adds the
``interop_stock`` column; ``--retain-memory`` runs the torch methods with :func:`natvi.retain_freed_memory`, glibc's allocator told to keep freed blocks).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import gpytorch  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import _common  # noqa: E402

NAME = "step_cost"
FULL = {"M": [50, 200, 500, 1000], "N": 3200, "likelihood": ["bernoulli", "softmax"],
        "whiten": [True, False], "dtype": ["float64", "float32"], "repeats": 7, "warmup": 3}
QUICK = {"M": [20, 50], "N": 400, "likelihood": ["bernoulli", "softmax"], "whiten": [True],
         "dtype": ["float64"], "repeats": 3, "warmup": 2}
GAMMA = 0.1
CLASSES = 3
TORCH_METHODS = ("natvi", "natvi_recomputed", "interop", "interop_recomputed", "gpytorch")
PEER = Path(__file__).with_name("_gpflow_peer.py")


def problem(N: int, M: int, likelihood: str, seed: int) -> dict:
    """Data, inducing inputs and fixed hyperparameters shared by every library (numpy)."""
    from sklearn.datasets import make_classification

    classes = 2 if likelihood == "bernoulli" else CLASSES
    X, y = make_classification(n_samples=N, n_features=6, n_informative=4, n_redundant=0,
                               n_classes=classes, n_clusters_per_class=1, random_state=seed)
    X = (X - X.mean(0)) / X.std(0)
    D = X.shape[1]
    return {"X": X, "Y": y.astype(np.float64), "Z": X[:M].copy(),
            "lengthscale": np.full(D, math.sqrt(D)), "variance": np.float64(1.0),
            "classes": classes}


def _kernel(p: dict, dtype: torch.dtype, batch: tuple[int, ...] = ()) -> gpytorch.kernels.Kernel:
    D = p["X"].shape[1]
    b = torch.Size(batch)
    k = gpytorch.kernels.ScaleKernel(
        gpytorch.kernels.RBFKernel(ard_num_dims=D, batch_shape=b), batch_shape=b
    ).to(dtype)
    k.base_kernel.lengthscale = torch.as_tensor(p["lengthscale"], dtype=dtype).expand(*b, 1, D)
    k.outputscale = torch.full(b, float(p["variance"]), dtype=dtype)
    for q in k.parameters():
        q.requires_grad_(False)
    return k


def natvi_step(p: dict, likelihood: str, whiten: bool, dtype: torch.dtype, reuse: bool = True):
    from natvi.gp import SVGP
    from natvi.likelihoods import Bernoulli, Softmax
    from natvi.optim import NaturalGradient

    X, y = torch.as_tensor(p["X"], dtype=dtype), torch.as_tensor(p["Y"], dtype=dtype)
    L = 1 if likelihood == "bernoulli" else p["classes"]
    lik = Bernoulli() if L == 1 else Softmax(L, num_samples=50)
    model = SVGP(_kernel(p, dtype), lik, torch.as_tensor(p["Z"], dtype=dtype), whiten=whiten,
                 num_latent=L, learn_inducing=False)
    model.reuse_fixed_prior = reuse
    opt = NaturalGradient.for_model(model, lr=GAMMA)

    def step() -> None:
        opt.zero_grad()
        (-model.elbo(X, y)).backward()
        opt.step()

    with torch.no_grad():
        elbo0 = float(model.elbo(X, y))
    return step, elbo0


class _GPyTorchModel(gpytorch.models.ApproximateGP):
    def __init__(self, p: dict, q, whiten: bool, num_latent: int, dtype: torch.dtype,
                 natvi_strategy: bool = True) -> None:
        from natvi.gp import gpytorch as interop

        Z = torch.as_tensor(p["Z"], dtype=dtype)
        if isinstance(q, interop.NatviVariationalDistribution) and natvi_strategy:
            cls = (interop.NatviVariationalStrategy if whiten
                   else interop.NatviUnwhitenedVariationalStrategy)
        else:
            cls = (gpytorch.variational.VariationalStrategy if whiten
                   else gpytorch.variational.UnwhitenedVariationalStrategy)
        strategy = cls(self, Z, q, learn_inducing_locations=False)
        batch = ()
        if num_latent > 1:
            strategy = gpytorch.variational.IndependentMultitaskVariationalStrategy(
                strategy, num_tasks=num_latent)
            batch = (num_latent,)
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ZeroMean(batch_shape=torch.Size(batch))
        self.covar_module = _kernel(p, dtype, batch)
        self.to(dtype)

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def gpytorch_step(p: dict, likelihood: str, whiten: bool, dtype: torch.dtype, interop: bool,
                  natvi_strategy: bool = True, reuse: bool = True):
    """GPyTorch's NGD (``interop=False``) or natvi's distribution + optimiser inside GPyTorch
    (``reuse``: natvi's strategy keeps the fixed prior's blocks)."""
    from natvi.gp.gpytorch import NatviVariationalDistribution
    from natvi.optim import NaturalGradient
    from natvi.parameterizations import Natural

    X, N = torch.as_tensor(p["X"], dtype=dtype), p["X"].shape[0]
    L = 1 if likelihood == "bernoulli" else p["classes"]
    M = p["Z"].shape[0]
    batch = torch.Size([L]) if L > 1 else torch.Size([])
    if interop:
        q = NatviVariationalDistribution(M, batch_shape=batch, parameterization=Natural(),
                                         dtype=dtype)
    else:
        q = gpytorch.variational.NaturalVariationalDistribution(M, batch_shape=batch)
    model = _GPyTorchModel(p, q, whiten, L, dtype, natvi_strategy)
    strategy = model.variational_strategy
    getattr(strategy, "base_variational_strategy", strategy).reuse_fixed_prior = reuse
    if L == 1:
        lik = gpytorch.likelihoods.BernoulliLikelihood()
        y = torch.as_tensor(p["Y"], dtype=dtype)
    else:
        lik = gpytorch.likelihoods.SoftmaxLikelihood(num_classes=L, mixing_weights=False)
        y = torch.as_tensor(p["Y"]).long()
    mll = gpytorch.mlls.VariationalELBO(lik.to(dtype), model, num_data=N)
    if interop:
        opt = NaturalGradient.for_model(model, lr=GAMMA, num_data=N)
    else:
        opt = gpytorch.optim.NGD(model.variational_parameters(), num_data=N, lr=GAMMA)

    def step() -> None:
        # Cholesky at every size for both paths: above GPyTorch's default max_cholesky_size (800)
        # the prior K_ZZ would go through CG and stochastic Lanczos log-dets (inexact steps).
        with gpytorch.settings.num_likelihood_samples(100), \
                gpytorch.settings.max_cholesky_size(10**6):
            opt.zero_grad()
            (-mll(model(X), y)).backward()
            opt.step()

    return step


def install_gpflow(directory: Path) -> Path:
    """A virtual environment at ``directory`` with gpflow, tensorflow-cpu and tf-keras."""
    python = directory / "bin" / "python"
    if not python.exists():
        venv.create(directory, with_pip=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "gpflow", "tensorflow-cpu",
                    "tf-keras"], check=True)
    return python


def gpflow_times(python: Path, p: dict, cfg: dict) -> dict:
    """Run :mod:`benchmarks._gpflow_peer` for one configuration; its JSON answer (or an error)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "problem.npz"
        np.savez(path, **{k: v for k, v in p.items() if k != "classes"})
        env = {"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
               "TF_NUM_INTEROP_THREADS": "1", "PATH": "/usr/bin:/bin"}
        out = subprocess.run([str(python), str(PEER), str(path), json.dumps(cfg)],
                             capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(p: dict, likelihood: str, whiten: bool, dtype_name: str, repeats: int, warmup: int,
            gpflow_python: Path | None, interop_stock: bool = False, rounds: int = 1,
            schedule: str = "blocks") -> dict:
    """One row: ``rounds`` times (the torch methods, ``repeats`` steps each in ``schedule``
    order, then GPflow's ``repeats`` in its subprocess), medians over the pooled steps —
    alternating rounds, so that a slow spell of a shared machine hits the torch methods and
    GPflow alike."""
    dtype = getattr(torch, dtype_name)
    methods = TORCH_METHODS + (("interop_stock",) if interop_stock else ())
    M, N = p["Z"].shape[0], p["X"].shape[0]
    row: dict = {"likelihood": likelihood, "whiten": whiten, "dtype": dtype_name, "M": M, "N": N}
    steps, failed = {}, {}
    natvi, row["natvi_elbo0"] = natvi_step(p, likelihood, whiten, dtype)
    steps["natvi"] = natvi
    steps["natvi_recomputed"] = natvi_step(p, likelihood, whiten, dtype, reuse=False)[0]
    steps["interop"] = gpytorch_step(p, likelihood, whiten, dtype, interop=True)
    steps["interop_recomputed"] = gpytorch_step(p, likelihood, whiten, dtype, interop=True,
                                                reuse=False)
    steps["gpytorch"] = gpytorch_step(p, likelihood, whiten, dtype, interop=False)
    if interop_stock:
        steps["interop_stock"] = gpytorch_step(p, likelihood, whiten, dtype, interop=True,
                                               natvi_strategy=False)
    times: dict[str, list[float]] = {name: [] for name in methods}
    gpflow: list[float] = []
    row["gpflow_ms"], row["gpflow_elbo0"] = math.nan, math.nan

    def one(name: str, timed: bool) -> None:
        if name in failed:
            return
        t0 = time.perf_counter()
        try:
            steps[name]()
        except Exception as e:  # noqa: BLE001 - a failing method is a result
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
        if timed:
            times[name].append(time.perf_counter() - t0)

    def torch_round(count: int, timed: bool) -> None:
        """``count`` steps of every torch method that has not failed: ``blocks``, each
        method's steps one after another (as in its own fit loop, and as GPflow's run);
        ``steps``, one step of each method in turn."""
        if schedule == "steps":
            for _ in range(count):
                for name in methods:
                    one(name, timed)
        else:
            for name in methods:
                for _ in range(count):
                    one(name, timed)

    torch_round(warmup, timed=False)
    for _ in range(rounds):
        torch_round(repeats, timed=True)
        if gpflow_python is not None and "gpflow" not in failed:
            cfg = {"M": M, "whiten": whiten, "dtype": dtype_name, "likelihood": likelihood,
                   "classes": p["classes"], "gamma": GAMMA, "repeats": repeats,
                   "warmup": warmup}
            res = gpflow_times(gpflow_python, p, cfg)
            if "error" in res:
                failed["gpflow"] = res["error"][:100]
            else:
                gpflow += res["times"]
                row["gpflow_elbo0"] = res["elbo0"]
                if not res["finite"]:
                    failed["gpflow"] = "non-finite q after the steps"
    for name in methods:
        row[f"{name}_ms"] = math.nan if name in failed else 1e3 * _common.median(times[name])
    if gpflow and "gpflow" not in failed:
        row["gpflow_ms"] = 1e3 * _common.median(gpflow)
    peers = [row[k] for k in ("gpytorch_ms", "gpflow_ms") if not math.isnan(row[k])]
    row["natvi / fastest peer"] = row["natvi_ms"] / min(peers) if peers else math.nan
    row["natvi_recomputed / fastest peer"] = (row["natvi_recomputed_ms"] / min(peers) if peers
                                              else math.nan)
    row["natvi / gpytorch"] = row["natvi_ms"] / row["gpytorch_ms"]
    row["natvi / gpflow"] = row["natvi_ms"] / row["gpflow_ms"]
    row["interop / gpytorch"] = row["interop_ms"] / row["gpytorch_ms"]
    row["interop_recomputed / gpytorch"] = row["interop_recomputed_ms"] / row["gpytorch_ms"]
    if interop_stock:
        row["interop_stock / gpytorch"] = row["interop_stock_ms"] / row["gpytorch_ms"]
    row["failed"] = "; ".join(f"{k}: {v}" for k, v in failed.items())
    return row


def plot(rows: list[dict], path: Path) -> None:
    """One column per (likelihood, dtype): ms per step of every method (top; whitened solid,
    unwhitened dashed) and the ratios against the targets (bottom); a missing point is a
    method that failed there (the CSV says why)."""
    panels = sorted({(r["likelihood"], r["dtype"]) for r in rows}, key=str)
    fig, axes = plt.subplots(2, len(panels), figsize=(3.6 * len(panels) + 1.0, 6.6),
                             sharex=True, squeeze=False)
    methods = (("natvi", "natvi"), ("natvi_recomputed", "natvi, prior recomputed"),
               ("interop", "natvi interop (GPyTorch model)"),
               ("interop_recomputed", "interop, prior recomputed"), ("gpytorch", "GPyTorch NGD"),
               ("gpflow", "GPflow NaturalGradient"))
    ratios = (("natvi / fastest peer", "natvi / fastest peer", "C0", "o"),
              ("natvi_recomputed / fastest peer", "recomputed / fastest peer", "C1", "s"),
              ("interop / gpytorch", "interop / GPyTorch NGD", "C2", "^"),
              ("interop_recomputed / gpytorch", "interop recomputed / GPyTorch NGD", "C3", "v"))
    for col, (likelihood, dtype) in enumerate(panels):
        top, bottom = axes[0, col], axes[1, col]
        for whiten, ls in ((True, "-"), (False, "--")):
            sub = sorted((r for r in rows if (r["likelihood"], r["dtype"], r["whiten"])
                          == (likelihood, dtype, whiten)), key=lambda r: r["M"])
            if not sub:
                continue
            Ms = [r["M"] for r in sub]
            for j, (name, _) in enumerate(methods):
                top.loglog(Ms, [r.get(f"{name}_ms", math.nan) for r in sub], marker="o", ms=3,
                           color=f"C{j}", ls=ls)
            for key, _, color, marker in ratios:
                bottom.semilogx(Ms, [r.get(key, math.nan) for r in sub], marker=marker, ms=4,
                                color=color, ls=ls, mfc="none" if not whiten else color)
        bottom.axhline(0.8, color="k", ls=":", lw=1)
        bottom.axhline(1.0, color="gray", lw=0.5)
        top.set_title(f"{likelihood}, {dtype}", fontsize=10)
        bottom.set_xlabel("M (inducing points)")
    axes[0, 0].set_ylabel("ms per natural step (median)")
    axes[1, 0].set_ylabel("ratio (target ≤ 0.8, dotted)")
    handles = [plt.Line2D([], [], color=f"C{j}", marker="o", ms=3, label=label)
               for j, (_, label) in enumerate(methods)]
    handles += [plt.Line2D([], [], color=color, marker=marker, ms=4, label=label)
                for _, label, color, marker in ratios]
    handles += [plt.Line2D([], [], color="gray", ls="-", label="whitened q"),
                plt.Line2D([], [], color="gray", ls="--", label="unwhitened q")]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    _common.save_figure(fig, path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = _common.parser(NAME, __doc__.splitlines()[0], threads=True, retain_memory=True)
    parser.add_argument("--gpflow-python", type=Path, default=None,
                        help="python of a virtual environment with gpflow + tensorflow-cpu")
    parser.add_argument("--install-gpflow", type=Path, default=None, metavar="DIR",
                        help="create that environment at DIR with pip, then use it")
    parser.add_argument("--M", type=int, nargs="+", default=None)
    parser.add_argument("--likelihood", nargs="+", choices=("bernoulli", "softmax"), default=None)
    parser.add_argument("--whiten", nargs="+", choices=("yes", "no"), default=None)
    parser.add_argument("--dtype", nargs="+", choices=("float64", "float32"), default=None)
    parser.add_argument("--N", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating rounds of (torch methods, GPflow) per row "
                             "(default 2; 1 with --quick)")
    parser.add_argument("--schedule", choices=("blocks", "steps"), default="blocks",
                        help="torch methods' order in a round: 'blocks' (default), each "
                             "method's steps back to back as in a fit loop and as GPflow's; "
                             "'steps', one step of each method in turn (the protocol before "
                             "2026-12-03's fifth session)")
    parser.add_argument("--interop-stock", action="store_true",
                        help="also time the interop q under GPyTorch's own VariationalStrategy")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    retained = _common.retain_memory(args)  # (GPflow's TensorFlow keeps its own pool anyway)
    grid = dict(QUICK if args.quick else FULL)
    for key in ("M", "likelihood", "dtype", "N", "repeats"):
        if getattr(args, key) is not None:
            grid[key] = getattr(args, key)
    if args.whiten is not None:
        grid["whiten"] = [w == "yes" for w in args.whiten]
    python = args.gpflow_python
    if args.install_gpflow is not None:
        python = install_gpflow(args.install_gpflow)
    rows = []
    for likelihood in grid["likelihood"]:
        for dtype in grid["dtype"]:
            for whiten in grid["whiten"]:
                for M in grid["M"]:
                    p = problem(grid["N"], M, likelihood, args.seed)
                    rows.append(measure(p, likelihood, whiten, dtype, grid["repeats"],
                                        grid["warmup"], python, args.interop_stock,
                                        rounds=args.rounds or (1 if args.quick else 2),
                                        schedule=args.schedule))
                    print(_common.markdown_table(rows[-1:]), flush=True)
    d = _common.out_dir(args, NAME)
    _common.write_csv(d / "step_cost.csv", rows)
    plot(rows, d / "step_cost.png")
    settings = {
        "quick": args.quick, "grid": grid, "gamma": GAMMA,
        "rounds (torch, then GPflow; pooled)": args.rounds or (1 if args.quick else 2),
        "torch schedule within a round": args.schedule,
        "data": f"make_classification N={grid['N']}, D=6, standardised; Z = first M points",
        "step": "zero_grad + total ELBO on all N + backward + natural step on q; "
                "hyperparameters and Z fixed",
        "gpflow": "not run (pass --gpflow-python or --install-gpflow)" if python is None
                  else str(python),
        "freed memory retained (glibc mallopt)": retained,
    }
    notes = (
        "Ratios < 1: natvi's step is cheaper. Targets (issue 15): natvi / fastest peer ≤ 0.8 and "
        "interop / gpytorch ≤ 0.8. natvi keeps the fixed prior's blocks between steps; "
        "natvi_recomputed recomputes them as the peers do; interop and interop_recomputed likewise. natvi_elbo0 and gpflow_elbo0 are the ELBO at the prior, "
        "the same problem in both libraries (softmax: Monte Carlo, so close, not equal)."
    )
    _common.write_report(d / "README.md", "Cost of one natural-gradient step",
                         f"python -m benchmarks {NAME} " + " ".join(argv), settings,
                         {"Median ms per natural step and ratios": rows}, notes=notes)
    print(_common.markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
