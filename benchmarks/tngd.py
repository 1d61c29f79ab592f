"""``tngd``: (thermodynamic) natural-gradient descent against Adam and SGD on digits.

Trains an MLP (64→hidden→10, tanh) and multinomial logistic regression on scikit-learn's
digits with cross-entropy, from the same initial weights and the same minibatch sequence:

- Adam, SGD;
- NGD (GGN + fixed damping λ) with Cholesky (dense), CG (matrix-free, warm-started, capped
  iterations) and Woodbury (``λ I + U Uᵀ``, rank ``B·10``) — the last two solve the same system;
- TNGD: NGD with the OU solver (Euler–Maruyama, noise κ0) for analog time t ∈ {5, 10, 20, 50} τ,
  warm-started from the previous natural gradient, time-averaged.

Writes ``curves.csv`` (training loss and test accuracy against iteration and wall-clock),
``summary.csv`` (final loss/accuracy, iterations to reach Adam's final training loss, digital
seconds per iteration and its ratio to Adam's, modelled device seconds per iteration),
``ou_error.csv`` (relative error of the TNGD estimate against the exact natural gradient at
the initial weights, by t), ``curves.png`` and ``README.md``.

Run: ``python -m benchmarks tngd [--quick]``.
"""

from __future__ import annotations

import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from benchmarks import _common  # noqa: E402
from models import mlp_digits  # noqa: E402
from natvi.fisher import Curvature  # noqa: E402
from natvi.linalg import CG, OU, Cholesky, Woodbury  # noqa: E402
from natvi.optim.ngd import NGD  # noqa: E402

NAME = "tngd"


def _methods(args, times: list[float]) -> dict:
    """``name -> factory(model) -> step(x, y)``."""

    def torch_opt(cls, **kw):
        def make(model):
            opt = cls(model.parameters(), **kw)

            def step(x, y):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                return {}

            return step

        return make

    def ngd(solver):
        def make(model):
            opt = NGD(model, F.cross_entropy, lr=args.ngd_lr, damping=args.damping,
                      solver=solver)

            def closure(x, y):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss

            def step(x, y):
                opt.observe(x, y)
                opt.step(lambda: closure(x, y))
                return opt.last

            return step

        return make

    methods = {
        "Adam": torch_opt(torch.optim.Adam, lr=args.adam_lr),
        "SGD": torch_opt(torch.optim.SGD, lr=args.sgd_lr),
        "NGD-Cholesky": ngd(Cholesky()),
        "NGD-CG": ngd(CG(tol=1e-6, max_iter=args.cg_iters)),
        "NGD-Woodbury": ngd(Woodbury()),
    }
    for t in times:
        n = max(1, round(t / args.dt))
        methods[f"TNGD-t{t:g}"] = ngd(OU(dt=args.dt, num_samples=n, noise=args.kappa,
                                         method="euler", seed=args.seed))
    return methods


def _train(model_name, make_model, data, methods, args) -> tuple[list, list]:
    curves, summary = [], []
    g = torch.Generator().manual_seed(args.seed)
    N = data.X.shape[0]
    batches = [torch.randint(0, N, (args.batch,), generator=g) for _ in range(args.iters)]
    for name, factory in methods.items():
        factory(make_model())(data.X[batches[0]], data.y[batches[0]])  # warm-up, untimed
        model = make_model()
        step = factory(model)
        elapsed, secs, device, solve = 0.0, [], [], []
        for k in range(args.iters + 1):
            if k % args.eval_every == 0 or k == args.iters:
                with torch.no_grad():
                    train_loss = float(F.cross_entropy(model(data.X), data.y))
                acc = mlp_digits.accuracy(model, data.X_test, data.y_test)
                curves.append({"model": model_name, "method": name, "iteration": k,
                               "seconds": elapsed, "train_loss": train_loss, "test_acc": acc})
            if k == args.iters:
                break
            idx = batches[k]
            t0 = time.perf_counter()
            rec = step(data.X[idx], data.y[idx])
            secs.append(time.perf_counter() - t0)
            elapsed += secs[-1]
            solve.append(rec.get("solve_seconds") or 0.0)
            device.append(rec.get("device_seconds") or 0.0)
        summary.append({"model": model_name, "method": name, "params": _size(model),
                        "final_train_loss": train_loss, "final_test_acc": acc,
                        "s_per_iter": statistics.median(secs),
                        "solve_s_per_iter": statistics.median(solve),
                        "device_s_per_iter": statistics.median(device) if any(device) else None})
    adam = next(r for r in summary if r["method"] == "Adam")
    for r in summary:
        r["digital_vs_adam"] = r["s_per_iter"] / adam["s_per_iter"]
        hits = [c["iteration"] for c in curves if c["model"] == model_name
                and c["method"] == r["method"] and c["train_loss"] <= adam["final_train_loss"]]
        r["iters_to_adam_final_loss"] = min(hits) if hits else "never"
        if r["device_s_per_iter"] is not None:  # digital gradient/GGN work + the analog solve
            r["modelled_s_per_iter"] = r["s_per_iter"] - r["solve_s_per_iter"] + r[
                "device_s_per_iter"]
        else:
            r["modelled_s_per_iter"] = None
    return curves, summary


def _size(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _ou_error(model, data, times, args) -> list[dict]:
    """Relative error of the TNGD natural gradient (cold start from g) at the initial weights."""
    idx = torch.arange(args.batch)
    curv = Curvature(model, data.X[idx], data.y[idx])
    A = curv.low_rank(args.damping)
    exact = Cholesky().solve(A, curv.grad).x
    rows = []
    for t in times:
        n = max(1, round(t / args.dt))
        errs = []
        for seed in range(3):
            ou = OU(dt=args.dt, num_samples=n, noise=args.kappa, method="euler", seed=seed)
            x = ou.solve(A, curv.grad, curv.grad).x
            errs.append(float(torch.linalg.vector_norm(x - exact) / torch.linalg.vector_norm(exact)))
        rows.append({"analog_time_tau": t, "relative_error_median": statistics.median(errs)})
    return rows


def _plot(curves, path) -> None:
    models = sorted({c["model"] for c in curves})
    fig, axes = plt.subplots(len(models), 3, figsize=(15, 4 * len(models)), squeeze=False)
    for row, m in zip(axes, models, strict=True):
        for method in dict.fromkeys(c["method"] for c in curves):
            cs = [c for c in curves if c["model"] == m and c["method"] == method]
            style = "--" if method.startswith("TNGD") else "-"
            row[0].plot([c["iteration"] for c in cs], [c["train_loss"] for c in cs], style,
                        label=method)
            row[1].plot([c["seconds"] for c in cs], [c["train_loss"] for c in cs], style)
            row[2].plot([c["iteration"] for c in cs], [c["test_acc"] for c in cs], style)
        row[0].set(title=f"{m}: training loss", xlabel="iteration", yscale="log")
        row[1].set(title=f"{m}: training loss", xlabel="digital seconds", yscale="log")
        row[2].set(title=f"{m}: test accuracy", xlabel="iteration")
        row[0].legend(fontsize=7)
    fig.tight_layout()
    _common.save_figure(fig, path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    p = _common.parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--damping", type=float, default=0.05)
    p.add_argument("--ngd-lr", type=float, default=0.3)
    p.add_argument("--adam-lr", type=float, default=0.03)
    p.add_argument("--sgd-lr", type=float, default=0.3)
    p.add_argument("--cg-iters", type=int, default=8)
    p.add_argument("--dt", type=float, default=0.04, help="OU Euler step in τ")
    p.add_argument("--kappa", type=float, default=1e-5, help="OU noise κ0")
    args = p.parse_args(argv)
    times = [5.0, 10.0, 20.0, 50.0]
    models = ("mlp", "mlr")
    if args.quick:
        args.hidden, args.iters, args.batch, args.eval_every = 8, 3, 16, 1
        times, models, args.dt = [5.0, 50.0], ("mlp",), 0.2
    torch.manual_seed(args.seed)
    out = _common.out_dir(args, NAME)
    data = mlp_digits.load(seed=args.seed)
    mlp_name = f"MLP-64-{args.hidden}-10"
    builders = {mlp_name: lambda: mlp_digits.mlp(args.hidden, seed=args.seed)}
    if "mlr" in models:
        builders["MLR"] = lambda: mlp_digits.mlr(seed=args.seed)
    curves, summary = [], []
    for name, make in builders.items():
        c, s = _train(name, make, data, _methods(args, times), args)
        curves += c
        summary += s
    ou_rows = _ou_error(builders[mlp_name](), data, times, args)
    _common.write_csv(out / "curves.csv", curves)
    _common.write_csv(out / "summary.csv", summary)
    _common.write_csv(out / "ou_error.csv", ou_rows)
    _plot(curves, out / "curves.png")
    notes = (
        "Digital seconds are medians over iterations on this machine, measured side by side in "
        "one run; the machine was heavily loaded by other jobs, so absolute times are inflated "
        "and ratios are noisy. TNGD's digital time is a *simulation* of the analog solve; "
        "`modelled_s_per_iter` replaces the simulated solve by the modelled device time "
        "(τ = 1 µs, 16 bit, 50 Gb/s) and keeps the digital gradient/GGN-factor work. "
        "`iters_to_adam_final_loss`: first evaluated iteration whose full training loss is at "
        "most Adam's final one."
    )
    settings = {k: v for k, v in vars(args).items() if k != "out"} | {"analog_times": times}
    _common.write_report(
        out / "README.md", "TNGD on digits: Adam, SGD, NGD (Cholesky/CG/Woodbury), TNGD",
        "python -m benchmarks tngd" + (" --quick" if args.quick else ""), settings,
        {"Summary": summary, "TNGD natural-gradient error at the initial weights": ou_rows},
        notes,
    )
    print(_common.markdown_table(summary))
    print(_common.markdown_table(ou_rows))
    return 0
