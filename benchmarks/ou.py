"""OU thermodynamic solver: error vs analog time and condition number against theory, digital
time against Cholesky and CG, and (when installed) against ``thermox.linalg.solve``.

``python -m benchmarks ou [--quick] [--out results]``. Every timing runs on one intra-op thread
(torch and XLA alike): on a shared, loaded machine that is the only setting that gives
repeatable medians, and it keeps the natvi/thermox comparison like for like.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from importlib import metadata

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from benchmarks import _common as common  # noqa: E402
from natvi.linalg import CG, OU, Cholesky  # noqa: E402
from natvi.linalg import ou_theory as theory  # noqa: E402

NAME = "ou"
F64 = torch.float64


def problem(n: int, cond: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPD ``A`` with eigenvalues log-spaced over ``[1/cond, 1]`` (λ_max = 1), ``b``, ``A⁻¹b``."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    ev = torch.logspace(-torch.log10(torch.tensor(cond, dtype=F64)).item(), 0, n, dtype=F64)
    A = (Q * ev) @ Q.mT
    b = torch.randn(n, generator=g, dtype=F64)
    return A, b, torch.linalg.solve(A, b)


def relative_rmse(X: torch.Tensor, x_star: torch.Tensor) -> float:
    """``sqrt(mean_r ‖x_r − x*‖²) / ‖x*‖`` over the columns ``x_r`` of ``X [n, R]``."""
    return float(((X - x_star.unsqueeze(-1)) ** 2).sum(0).mean().sqrt() / x_star.norm())


def theory_rmse(A, b, x_star, dt, N, burnin=0, noise=1.0) -> float:
    x0 = torch.zeros_like(b)
    mse = theory.expected_squared_error(A, b, x0, dt, N, burnin, noise)
    return float(mse.sqrt() / x_star.norm())


def error_vs_time(cfg, seed) -> list[dict]:
    rows = []
    for cond in cfg["conds"]:
        A, b, x_star = problem(cfg["n"], cond, seed)
        B = b.unsqueeze(-1).expand(-1, cfg["repeats"]).contiguous()
        for t in cfg["times"]:
            N = max(1, round(t / cfg["dt"]))
            res = OU(dt=cfg["dt"], num_samples=N, method="exact", seed=seed).solve(A, B)
            rows.append(
                {
                    "cond": cond,
                    "analog_time": N * cfg["dt"],
                    "rel_rmse": relative_rmse(res.x, x_star),
                    "theory": theory_rmse(A, b, x_star, cfg["dt"], N),
                }
            )
    return rows


def error_vs_condition(cfg, seed) -> list[dict]:
    rows = []
    t = cfg["fixed_time"]
    for cond in cfg["cond_sweep"]:
        A, b, x_star = problem(cfg["n"], cond, seed)
        B = b.unsqueeze(-1).expand(-1, cfg["repeats"]).contiguous()
        row = {"cond": cond, "analog_time": t}
        for method, dt in (("exact", cfg["dt"]), ("euler", cfg["euler_dt"])):
            N = round(t / dt)
            res = OU(dt=dt, num_samples=N, method=method, seed=seed).solve(A, B)
            row[f"{method}_rel_rmse"] = relative_rmse(res.x, x_star)
        row["theory"] = theory_rmse(A, b, x_star, cfg["dt"], round(t / cfg["dt"]))
        rows.append(row)
    return rows


def digital_time(cfg, seed) -> list[dict]:
    rows = []
    for n in cfg["sizes"]:
        A, b, x_star = problem(n, cfg["time_cond"], seed)
        N = cfg["time_samples"]
        solvers = {
            "cholesky": Cholesky(),
            "cg(tol=1e-6)": CG(tol=1e-6),
            f"ou_exact(N={N})": OU(dt=cfg["dt"], num_samples=N, method="exact", seed=seed),
            f"ou_euler(N={N})": OU(dt=cfg["dt"], num_samples=N, method="euler", seed=seed),
        }
        base = None
        for name, solver in solvers.items():
            res = solver.solve(A, b)
            secs = common.median(
                common.time_call(lambda s=solver, A=A, b=b: s.solve(A, b), cfg["reps"])
            )
            base = base or secs
            rows.append(
                {
                    "n": n,
                    "solver": name,
                    "digital_s": secs,
                    "x_cholesky": secs / base,
                    "rel_error": float((res.x - x_star).norm() / x_star.norm()),
                    "device_s_model": res.device_seconds if res.device_seconds else float("nan"),
                }
            )
    return rows


def versus_thermox(cfg, seed) -> tuple[list[dict], str]:
    """Same A, b, dt, samples and κ0 = 1/2 (thermox's identity diffusion): errors and time."""
    if cfg["tx_n"] is None:
        return [], "thermox comparison skipped in --quick mode (JAX tracing costs minutes here)."
    try:
        import jax
        import thermox
    except ImportError as exc:  # thermox is optional and not a natvi dependency
        return [], f"thermox not installed ({exc}); comparison skipped."
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    n, N, dt, R = cfg["tx_n"], cfg["tx_samples"], cfg["tx_dt"], cfg["tx_repeats"]
    A, b, x_star = problem(n, cfg["time_cond"], seed)
    A_j, b_j = jnp.asarray(A.numpy()), jnp.asarray(b.numpy())
    ou = OU(dt=dt, num_samples=N, noise=0.5, method="exact", seed=seed)
    solve_tx = lambda key: thermox.linalg.solve(A_j, b_j, num_samples=N, dt=dt, key=key)
    solve_tx_jit = jax.jit(partial(thermox.linalg.solve, num_samples=N, dt=dt))
    keys = jax.random.split(jax.random.PRNGKey(seed), R)
    X_tx = torch.stack([torch.from_numpy(jax.device_get(solve_tx(k)).copy()) for k in keys], 1)
    X_nv = torch.stack([ou.solve(A, b).x for _ in range(R)], 1)
    reps = cfg["reps"]
    t_nv = common.median(common.time_call(lambda: ou.solve(A, b), reps))
    t_tx = common.median(common.time_call(lambda: solve_tx(keys[0]).block_until_ready(), reps))
    t_tx_jit = common.median(
        common.time_call(lambda: solve_tx_jit(A_j, b_j, key=keys[0]).block_until_ready(), reps)
    )
    th = theory_rmse(A, b, x_star, dt, N, noise=0.5)
    rows = [
        {
            "solver": "natvi OU exact",
            "median_s": t_nv,
            "speedup_natvi": 1.0,
            "rel_rmse": relative_rmse(X_nv, x_star),
            "theory_rel_rmse": th,
        },
        {
            "solver": "thermox.linalg.solve",
            "median_s": t_tx,
            "speedup_natvi": t_tx / t_nv,
            "rel_rmse": relative_rmse(X_tx, x_star),
            "theory_rel_rmse": th,
        },
        {
            "solver": "thermox.linalg.solve (jax.jit)",
            "median_s": t_tx_jit,
            "speedup_natvi": t_tx_jit / t_nv,
            "rel_rmse": relative_rmse(X_tx, x_star),
            "theory_rel_rmse": th,
        },
    ]
    note = (
        f"thermox {metadata.version('thermox')} with jax {jax.__version__}, float64, "
        f"n={n}, {N} samples, dt={dt}, κ0=1/2, {R} seeded runs each for the errors."
    )
    return rows, note


def plot(out, t_rows, c_rows) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for cond in sorted({r["cond"] for r in t_rows}):
        rs = [r for r in t_rows if r["cond"] == cond]
        ts = [r["analog_time"] for r in rs]
        (line,) = ax1.loglog(ts, [r["rel_rmse"] for r in rs], "o", label=f"κ={cond:g}")
        ax1.loglog(ts, [r["theory"] for r in rs], "-", color=line.get_color())
    ax1.set(
        xlabel="analog time t [τ]",
        ylabel="relative RMSE of x̄",
        title="error vs analog time (dots: OU exact, lines: theory)",
    )
    ax1.legend()
    conds = [r["cond"] for r in c_rows]
    ax2.loglog(conds, [r["exact_rel_rmse"] for r in c_rows], "o", label="OU exact")
    ax2.loglog(conds, [r["euler_rel_rmse"] for r in c_rows], "x", label="OU Euler")
    ax2.loglog(conds, [r["theory"] for r in c_rows], "-", label="theory (exact)")
    ax2.set(
        xlabel="condition number κ (λ_max = 1)",
        ylabel="relative RMSE of x̄",
        title=f"error vs κ at t = {c_rows[0]['analog_time']:g} τ",
    )
    ax2.legend()
    fig.tight_layout()
    common.save_figure(fig, out / "ou_error.png", dpi=120)
    plt.close(fig)


def config(quick: bool) -> dict:
    if quick:
        return dict(
            n=20,
            repeats=16,
            dt=1.0,
            euler_dt=0.5,
            conds=[10.0, 100.0],
            times=[3.0, 30.0, 300.0],
            cond_sweep=[10.0, 100.0, 1000.0],
            fixed_time=100.0,
            sizes=[50, 100],
            time_cond=100.0,
            time_samples=2000,
            reps=3,
            tx_n=None,
        )
    return dict(
        n=50,
        repeats=64,
        dt=1.0,
        euler_dt=0.5,
        conds=[10.0, 100.0, 1000.0],
        times=[1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0],
        cond_sweep=[10.0, 31.6, 100.0, 316.0, 1000.0, 3160.0, 10000.0],
        fixed_time=1000.0,
        sizes=[50, 100, 200, 400],
        time_cond=100.0,
        time_samples=10_000,
        reps=5,
        tx_n=200,
        tx_samples=10_000,
        tx_dt=0.1,
        tx_repeats=8,
    )


def main(argv: list[str]) -> int:
    args = common.parser(NAME, __doc__.splitlines()[0]).parse_args(argv)
    torch.set_num_threads(1)
    cfg = config(args.quick)
    out = common.out_dir(args, NAME)
    t_rows = error_vs_time(cfg, args.seed)
    c_rows = error_vs_condition(cfg, args.seed)
    d_rows = digital_time(cfg, args.seed)
    tx_rows, tx_note = versus_thermox(cfg, args.seed)
    common.write_csv(out / "error_vs_time.csv", t_rows)
    common.write_csv(out / "error_vs_condition.csv", c_rows)
    common.write_csv(out / "digital_time.csv", d_rows)
    tables = {
        "Error vs analog time (OU exact, dt = 1 τ)": t_rows,
        "Error vs condition number at fixed analog time": c_rows,
        "Digital time per solve (one thread; machine shared with other jobs)": d_rows,
    }
    if tx_rows:
        common.write_csv(out / "thermox.csv", tx_rows)
        tables["natvi OU exact vs thermox.linalg.solve (one thread each)"] = tx_rows
    plot(out, t_rows, c_rows)
    command = "python -m benchmarks ou" + (" --quick" if args.quick else "")
    notes = (
        "A has eigenvalues log-spaced in [1/κ, 1]; x* = A⁻¹b; relative RMSE over seeded runs "
        "(columns of b run as independent trajectories); theory = "
        "natvi.linalg.ou_theory.expected_squared_error. device_s_model is the modelled "
        "thermodynamic-device time (τ = 1 µs, 16 bit, 50 Gb/s). Timings: medians, one thread, "
        "on a machine shared with other agents' jobs.\n\n" + tx_note
    )
    common.write_report(
        out / "README.md",
        "OU thermodynamic solver",
        command,
        {**cfg, "seed": args.seed},
        tables,
        notes,
    )
    print(common.markdown_table(tx_rows or d_rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
