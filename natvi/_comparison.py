"""Natural gradients vs Adam on one dataset: what ``natvi demo`` and ``natvi compare`` run.

Both methods fit the same sparse GP (same k-means inducing points, kernel, likelihood, seed,
iteration budget and stopping rule); only the optimiser of q(u) differs. Writes
``elbo_vs_time.png`` (ELBO against wall-clock for both), ``history.csv`` (every iteration) and
``summary.csv`` (the printed table) into the output folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import train_test_split

from natvi._io import atomic_savefig, atomic_write_csv
from natvi.estimators import make_estimator

__all__ = ["bundled_breast_cancer", "run_comparison", "METHODS"]

METHODS = {"natgrad": "natural gradients + Adam", "adam": "Adam (ordinary gradients)"}


def bundled_breast_cancer() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's Wisconsin breast-cancer data (569 × 30, labels malignant/benign)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = np.asarray(data.target_names)
    return data.data, names[data.target], list(data.feature_names)


def _metrics(est, X: np.ndarray, y: np.ndarray, task: str) -> dict[str, float]:
    if task == "classification":
        proba = est.predict_proba(X)
        return {
            "test_accuracy": accuracy_score(y, est.classes_[proba.argmax(axis=1)]),
            "test_log_loss": log_loss(y, proba, labels=est.classes_),
        }
    pred = est.predict(X)
    return {
        "test_rmse": float(np.sqrt(np.mean((pred - y) ** 2))),
        "test_mae": float(np.mean(np.abs(pred - y))),
    }


def run_comparison(
    X: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    likelihood: str,
    out: Path,
    args: argparse.Namespace,
    title: str,
) -> list[dict[str, float | str]]:
    """Fit with natural gradients and with Adam, print the table, write the plot and CSVs.

    ``args`` carries ``seed``, ``inducing``, ``test_size``, ``quick`` and ``no_progress``.
    Returns the summary rows.
    """
    stratify = y if task == "classification" else None
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=args.test_size, stratify=stratify, random_state=args.seed
    )
    max_iter = 60 if args.quick else 300
    rows, histories = [], {}
    for method in METHODS:
        print(f"fitting with {METHODS[method]} ...", flush=True)
        est = make_estimator(
            likelihood, num_inducing=args.inducing, method=method, max_iter=max_iter,
            random_state=args.seed, progress=not args.no_progress,
        )
        est.fit(X_tr, y_tr)
        hist = est.history_
        histories[method] = (np.asarray(hist.time), np.asarray(hist.elbo) / len(y_tr))
        rows.append({
            "method": method,
            "iterations": est.n_iter_,
            "wall_clock_s": float(hist.time[-1]),
            "final_elbo": est.elbo_,
            **_metrics(est, X_te, y_te, task),
        })
    out.mkdir(parents=True, exist_ok=True)
    _print_table(rows, len(y_tr), len(y_te))
    _write_csv(out / "summary.csv", rows)
    _write_csv(out / "history.csv", [
        {"method": m, "iteration": i + 1, "time_s": t, "elbo_per_datum": e}
        for m, (ts, es) in histories.items() for i, (t, e) in enumerate(zip(ts, es))
    ])
    _plot(out / "elbo_vs_time.png", histories, title)
    print(f"\nwrote {out / 'elbo_vs_time.png'} (ELBO against wall-clock time),")
    print(f"      {out / 'history.csv'} (every iteration) and {out / 'summary.csv'} (this table)")
    return rows


def _print_table(rows: list[dict], n_train: int, n_test: int) -> None:
    keys = list(rows[0])
    fmt = {"wall_clock_s": "{:.2f}", "final_elbo": "{:.2f}"}
    cells = [[fmt.get(k, "{:.4f}" if isinstance(r[k], float) else "{}").format(r[k]) for k in keys]
             for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print(f"\n{n_train} training / {n_test} test rows; ELBO is the total training ELBO (nats)")
    print("  ".join(k.rjust(w) for k, w in zip(keys, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


def _write_csv(path: Path, rows: list[dict]) -> None:
    atomic_write_csv(path, rows)


def _plot(path: Path, histories: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for method, (t, elbo) in histories.items():
        ax.plot(t, elbo, label=METHODS[method], lw=2)
    lo = min(np.percentile(e, 5) for _, e in histories.values())
    hi = max(e.max() for _, e in histories.values())
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.set_xlabel("wall-clock time (s)")
    ax.set_ylabel("ELBO per training point (nats)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
