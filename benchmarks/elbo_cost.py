"""Cost of one ELBO + gradient evaluation: natvi SVGP vs GPyTorch, two moons, float64.

GPyTorch: ``ApproximateGP`` + ``VariationalStrategy`` + ``CholeskyVariationalDistribution`` +
``VariationalELBO`` with its probit ``BernoulliLikelihood``. natvi: ``natvi.gp.SVGP`` (whitened,
probit ``Bernoulli``) with q in ``Natural`` (the default) and in ``MeanCholesky`` (GPyTorch's
own coordinates). Same kernel (scaled RBF), same Z, N = 4000. The two are timed alternately in
one loop, so a load on the machine falls on both; the figure reported is the median.
"""

from __future__ import annotations

import gpytorch
import matplotlib
import torch
from sklearn.datasets import make_moons

from benchmarks import _common as C
from natvi.gp import SVGP
from natvi.likelihoods import Bernoulli
from natvi.parameterizations import MeanCholesky, Natural

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAME = "elbo_cost"
DT = torch.float64


class _GPyTorchSVGP(gpytorch.models.ApproximateGP):
    def __init__(self, Z: torch.Tensor) -> None:
        q_u = gpytorch.variational.CholeskyVariationalDistribution(Z.shape[0])
        super().__init__(gpytorch.variational.VariationalStrategy(self, Z, q_u))
        self.mean_module = gpytorch.means.ZeroMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def _natvi_step(X, y, Z, parameterization):
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())
    model = SVGP(kernel=kernel, likelihood=Bernoulli(), inducing_points=Z,
                 parameterization=parameterization)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        (-model.elbo(X, y)).backward()

    return step


def _gpytorch_step(X, y, Z):
    model = _GPyTorchSVGP(Z).to(DT)
    lik = gpytorch.likelihoods.BernoulliLikelihood().to(DT)
    mll = gpytorch.mlls.VariationalELBO(lik, model, num_data=len(y))
    model.train()
    lik.train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        lik.zero_grad(set_to_none=True)
        (-mll(model(X), y) * len(y)).backward()

    return step


def measure(N: int, M: int, repeats: int, seed: int) -> list[dict]:
    Xn, yn = make_moons(N, noise=0.2, random_state=seed)
    X, y = torch.tensor(Xn, dtype=DT), torch.tensor(yn, dtype=DT)
    g = torch.Generator().manual_seed(seed)
    Z = X[torch.randperm(N, generator=g)[:M]].clone()
    steps = {
        "gpytorch": _gpytorch_step(X, y, Z),
        "natvi-Natural": _natvi_step(X, y, Z, Natural()),
        "natvi-MeanCholesky": _natvi_step(X, y, Z, MeanCholesky()),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for fn in steps.values():  # warm-up
        fn()
    for _ in range(repeats):  # interleaved: the same load falls on every contender
        for k, fn in steps.items():
            times[k] += C.time_call(fn, repeats=1, warmup=0)
    ref = C.median(times["gpytorch"])
    return [
        {"N": N, "M": M, "impl": k, "median_ms": 1e3 * C.median(t),
         "min_ms": 1e3 * min(t), "ratio_to_gpytorch": C.median(t) / ref, "repeats": repeats}
        for k, t in times.items()
    ]


def _plot(rows: list[dict], path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for impl in dict.fromkeys(r["impl"] for r in rows):
        rs = [r for r in rows if r["impl"] == impl]
        ax.plot([r["M"] for r in rs], [r["median_ms"] for r in rs], "o-", label=impl)
    ax.set_xlabel("inducing points M")
    ax.set_ylabel("ELBO + gradient, median ms")
    ax.set_title(f"N = {rows[0]['N']}, float64")
    ax.legend()
    fig.tight_layout()
    C.save_figure(fig, path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = C.parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args(argv)
    Ms = (50, 100) if args.quick else (50, 100, 200)
    repeats = args.repeats or (5 if args.quick else 30)
    N = 4000
    rows = [r for M in Ms for r in measure(N, M, repeats, args.seed)]
    out = C.out_dir(args, NAME)
    C.write_csv(out / "elbo_cost.csv", rows)
    _plot(rows, out / "elbo_cost.png")
    cmd = f"python -m benchmarks {NAME}" + (" --quick" if args.quick else "")
    C.write_report(
        out / "README.md", "One ELBO + gradient evaluation: natvi SVGP vs GPyTorch", cmd,
        {"N": N, "M": list(Ms), "repeats": repeats, "dtype": "float64", "seed": args.seed,
         "likelihood": "Bernoulli (probit), 20 Gauss-Hermite points in both"},
        {"Median wall-clock per evaluation": rows},
        notes="ratio_to_gpytorch < 1 means natvi is faster. Timed alternately in one process; "
        "the machine may be shared with other work, which falls on both contenders alike.",
    )
    print(C.markdown_table(rows))
    return 0
