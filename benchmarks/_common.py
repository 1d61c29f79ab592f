"""What every benchmark shares: arguments, the results folder, machine info, CSV/MD writers.

Each benchmark writes into ``<out>/<name>/``: ``<table>.csv``, ``<plot>.png`` and
``README.md`` (a Markdown table plus the machine, library versions and settings), where
``<out>`` defaults to ``results/``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from natvi._io import atomic_savefig, atomic_write_csv, atomic_write_text


def parser(name: str, description: str, threads: bool = False,
           retain_memory: bool = False) -> argparse.ArgumentParser:
    """The shared options; ``threads=True`` adds ``--threads`` (torch intra-op threads, default 1:
    on a shared machine, thread contention inflates the many small ``M × M`` operations);
    ``retain_memory=True`` adds ``--retain-memory`` (see :func:`retain_memory`)."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks {name}", description=description)
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats (< 2 min)")
    p.add_argument("--out", type=results_folder, default=Path("results"), help="results folder")
    p.add_argument("--seed", type=int, default=0)
    if threads:
        p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    if retain_memory:
        p.add_argument("--retain-memory", action="store_true",
                       help="natvi.retain_freed_memory() first: glibc keeps freed blocks in this "
                            "process (every torch method in it alike)")
    return p


def retain_memory(args: argparse.Namespace) -> bool:
    """``natvi.retain_freed_memory()`` if ``--retain-memory`` was given; whether it took effect
    (for the report's settings)."""
    if not getattr(args, "retain_memory", False):
        return False
    import natvi

    return natvi.retain_freed_memory()


def results_folder(value: str) -> Path:
    """``--out``: a folder that is, or can be made (with its parents), a writable directory —
    checked when the arguments are parsed, so a bad path is one line and exit 2 before any work."""
    path = Path(value)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{value}: directory {existing} is not writable")
    return path


def out_dir(args: argparse.Namespace, name: str) -> Path:
    d = Path(args.out) / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def machine() -> dict[str, str]:
    """The machine and library versions, recorded beside every result."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    for mod in ("gpytorch", "pyro", "natvi"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing peer is recorded, not fatal
            info[mod] = "not installed"
    return info


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    """``rows`` as a CSV table, written atomically (a failure leaves the old file intact)."""
    atomic_write_csv(path, rows)


def write_text(path: Path, text: str) -> None:
    """``text`` written atomically (a failure leaves the old file intact)."""
    atomic_write_text(path, text)


def save_figure(fig, path: Path, **savefig_kw) -> None:
    """``fig.savefig(path, ...)`` written atomically (a failure leaves the old file intact)."""
    atomic_savefig(fig, path, **savefig_kw)


def markdown_table(rows: Sequence[dict], floatfmt: str = ".4g") -> str:
    keys = list(rows[0].keys())
    fmt = lambda v: format(v, floatfmt) if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def write_report(
    path: Path,
    title: str,
    command: str,
    settings: dict,
    tables: dict[str, Sequence[dict]],
    notes: str = "",
) -> None:
    """A Markdown report: title, the command, tables, settings and the machine."""
    parts = [f"# {title}", "", f"Command: `{command}`", ""]
    for caption, rows in tables.items():
        parts += [f"## {caption}", "", markdown_table(rows), ""]
    if notes:
        parts += [notes, ""]
    parts += ["## Settings", ""] + [f"- {k}: {v}" for k, v in settings.items()] + [""]
    parts += ["## Machine", ""] + [f"- {k}: {v}" for k, v in machine().items()] + [""]
    atomic_write_text(path, "\n".join(parts))
