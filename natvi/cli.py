"""The ``natvi`` console script.

Sub-commands::

    natvi demo [--out natvi-demo]                      natural gradients vs Adam, bundled data
    natvi fit DATA.csv --target COL [--likelihood L] [--inducing M] [--out model.pt]
    natvi predict model.pt DATA.csv [--out preds.csv]
    natvi compare DATA.csv --target COL [--out natvi-compare]

Each sub-command lives in a function ``_cmd_<name>(args) -> int``; bad user input raises
:class:`CLIError` (or :class:`natvi._data.DataError`), which :func:`main` prints as one line on
stderr with exit status 2, before anything is written (output paths are checked before any work).
Every file is written atomically (:mod:`natvi._io`); a write that fails (a full disk) is one line
naming the file and the cause, exit status 1, and the previous file is left intact.

``natvi fit``, ``natvi compare`` and ``natvi demo`` may be launched by ``torchrun`` (detected by
its ``RANK`` / ``WORLD_SIZE`` environment variables): every process reads the data, trains on
its strided share of the rows, the gradients are all-reduced (:mod:`natvi.distributed`, gloo),
and only rank 0 prints and writes files.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import natvi
from natvi._data import LIKELIHOODS, DataError
from natvi._io import WriteError, atomic_write_text, check_output_dir, check_output_file
from natvi._threads import retain_freed_memory
from natvi.likelihoods.registry import entry

__all__ = ["main", "CLIError", "build_parser"]


class CLIError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors become :class:`CLIError` (one line, status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CLIError(f"{message} (see '{self.prog} --help')")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value:g}")
    return value


def _writable_file(path: Path, what: str) -> Path:
    """Check (without writing, before any work) that ``path`` can be written as a file."""
    try:
        return check_output_file(path, what)
    except ValueError as err:
        raise CLIError(str(err)) from None


def _writable_dir(path: Path, what: str) -> Path:
    """Check (without writing, before any work) that ``path`` is or can become a folder."""
    try:
        return check_output_dir(path, what)
    except ValueError as err:
        raise CLIError(str(err)) from None


def _cmd_demo(args: argparse.Namespace) -> int:
    from natvi._comparison import run_demo

    out = _writable_dir(args.out, "--out")
    print(
        f"natvi {natvi.__version__} demo: natural gradients vs Adam on q, each trained until its "
        "ELBO settles: (a) sparse GP classifier on scikit-learn's breast-cancer data (569 "
        "patients, 30 features), hyperparameters learned; (b) ill-conditioned Poisson counts "
        "(1000 points, rates 7 to 1100), q only."
    )
    run_demo(out, args)
    return 0


def _read_labelled(args: argparse.Namespace):
    """``(table, likelihood, y)`` from ``args.data`` / ``--target`` / ``--likelihood``, checked."""
    from natvi._data import check_target, infer_likelihood, read_csv

    table = read_csv(args.data)
    likelihood = args.likelihood
    if likelihood is None:
        likelihood = infer_likelihood(table, args.target)
        kind = {"binary": "two classes", "multiclass": "class labels"}.get(
            entry(likelihood).task, "real values")
        print(f"target {args.target!r} holds {kind}: training with the {likelihood} likelihood "
              "(choose another with --likelihood)")
    return table, likelihood, check_target(table, args.target, likelihood)


def _cmd_compare(args: argparse.Namespace) -> int:
    from natvi._comparison import run_comparison

    out = _writable_dir(args.out, "--out")
    table, likelihood, y = _read_labelled(args)
    X = table.features(exclude=args.target)
    task = "classification" if entry(likelihood).task in ("binary", "multiclass") else "regression"
    print(f"natvi compare: {args.data} ({len(y)} rows, {X.shape[1]} features), "
          f"likelihood {likelihood}.")
    with _data_errors(args.data):
        run_comparison(X, y, task=task, likelihood=likelihood, out=out, args=args,
                       title=f"{Path(args.data).name}, target {args.target!r}")
    return 0


@contextlib.contextmanager
def _data_errors(path: Path) -> Iterator[None]:
    """A ``ValueError`` raised by an estimator about the data (e.g. features that cannot be
    standardised) becomes one line naming the file."""
    try:
        yield
    except ValueError as err:
        raise CLIError(f"{path}: {err}") from None


def _cmd_fit(args: argparse.Namespace) -> int:
    from natvi.estimators import make_estimator

    out = _writable_file(args.out, "--out")
    table, likelihood, y = _read_labelled(args)
    names = [c for c in table.columns if c != args.target]
    X = table.features(names)
    limit = {} if args.max_iter is None else {"max_iter": args.max_iter}
    est = make_estimator(
        likelihood, num_inducing=args.inducing, method=args.method, random_state=args.seed,
        progress=not args.no_progress, **limit,
    )
    with _data_errors(args.data):
        est.fit(X, y)
    est.feature_names_ = names
    est.save(out)
    print(f"fitted {type(est).__name__} ({_trained(est)}) on {len(y)} rows, {X.shape[1]} features, "
          f"{est.inducing_points_.shape[0]} inducing points: {est.n_iter_} iterations, "
          f"final ELBO {est.elbo_:.4g}, training score {est.score(X, y):.4f}")
    print(f"model saved to {out}")
    return 0


def _trained(est) -> str:
    """What ``est`` actually trained: its likelihood's name, and the classes of a classifier."""
    from natvi.likelihoods import name_of

    name = name_of(est.model_.likelihood)
    classes = getattr(est, "classes_", None)
    return name if classes is None else f"{name}, {len(classes)} classes"


def _cmd_predict(args: argparse.Namespace) -> int:
    from natvi._data import read_csv
    from natvi.estimators import load

    if not args.model.is_file():
        raise CLIError(f"{args.model}: no such model file; create one with 'natvi fit'.")
    out = _writable_file(args.out, "--out") if args.out is not None else None
    try:
        est = load(args.model)
    except ValueError as err:
        raise CLIError(str(err)) from None
    table = read_csv(args.data)
    X = table.features(_feature_names(est, table, args.model))
    header, rows = est.prediction_table(X)
    lines = [",".join(header)] + [",".join(r) for r in rows]
    text = "\n".join(lines) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(out, text)
        print(f"{len(rows)} predictions written to {out}")
    return 0


def _feature_names(est, table, model_path: Path) -> list[str]:
    """The CSV columns to predict from: those the model was trained on, by name; a model saved
    from Python without names takes every column of the CSV, in order, if the count matches."""
    names = list(getattr(est, "feature_names_", []))
    if names:
        return names
    columns = list(table.columns)
    if len(columns) != est.n_features_in_:
        raise CLIError(
            f"{model_path} was saved without feature names (fitted on an array of "
            f"{est.n_features_in_} features), but {table.path} has {len(columns)} columns; give a "
            f"CSV with exactly the {est.n_features_in_} feature columns in training order, or set "
            "estimator.feature_names_ to the column names before estimator.save()."
        )
    print(f"note: {model_path} has no feature names; using the {len(columns)} columns of "
          f"{table.path} in order.", file=sys.stderr)
    return columns


def _add_common_fit_args(p: argparse.ArgumentParser, inducing: int) -> None:
    p.add_argument("--inducing", type=_positive_int, default=inducing, metavar="M",
                   help=f"number of inducing points, chosen by k-means (default {inducing})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


_LIKELIHOOD_HELP = (
    "default: inferred from the target as scikit-learn's type_of_target reads it: two distinct "
    "values -> bernoulli, more class labels (strings, or integers such as 0/1/2) -> softmax, "
    "real values -> gaussian"
)
_TORCHRUN_HELP = (
    "'natvi fit', 'natvi compare' and 'natvi demo' can be launched by torchrun, e.g. "
    "'torchrun --nproc-per-node 2 -m natvi fit data.csv --target y' (or 'torchrun "
    "--no-python ... natvi fit ...'): every process reads the "
    "CSV and trains on its share of the rows (data-parallel natural gradients over "
    "torch.distributed, gloo backend); only rank 0 prints and writes files. Across machines "
    "add --nnodes and --rdzv-endpoint; see docs/distributed.md."
)
_DISTRIBUTED_COMMANDS = ("fit", "compare", "demo")


def _under_torchrun() -> bool:
    """Launched by torchrun with more than one process."""
    from natvi.distributed import launched_by_torchrun

    return launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1


@contextlib.contextmanager
def _torchrun(args: argparse.Namespace) -> Iterator[None]:
    """Under torchrun: join the process group and train data-parallel; ranks > 0 print nothing
    and write their outputs into a scratch folder that is deleted afterwards."""
    from natvi import distributed

    if not _under_torchrun() or args.command not in _DISTRIBUTED_COMMANDS:
        yield
        return
    distributed.init_from_env(backend="gloo")
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(distributed.data_parallel(shard_data=True))
            if not distributed.is_main_process():
                # the same check as rank 0 (which writes there), so a bad --out fails every rank
                check = _writable_file if args.command == "fit" else _writable_dir
                check(args.out, "--out")
                scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                args.out = scratch / args.out.name
                devnull = stack.enter_context(open(os.devnull, "w"))
                stack.enter_context(contextlib.redirect_stdout(devnull))
            yield
    finally:
        import torch.distributed as dist

        dist.destroy_process_group()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="natvi", description="Natural-gradient variational inference for GP models.",
        epilog=_TORCHRUN_HELP,
    )
    parser.add_argument("--version", action="version", version=f"natvi {natvi.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="natural gradients vs Adam on a bundled dataset",
                          epilog=_TORCHRUN_HELP)
    demo.add_argument("--out", type=Path, default=Path("natvi-demo"),
                      help="folder for the plot and CSV (default natvi-demo/)")
    demo.add_argument("--quick", action="store_true", help="at most 60 iterations per fit (a smoke test)")
    _add_common_fit_args(demo, inducing=50)
    demo.set_defaults(func=_cmd_demo, test_size=0.3)

    cmp_ = sub.add_parser("compare", help="natural gradients vs Adam on your CSV file",
                          epilog=_TORCHRUN_HELP)
    cmp_.add_argument("data", type=Path, help="CSV file with a header row")
    cmp_.add_argument("--target", required=True, help="name of the column to predict")
    cmp_.add_argument("--likelihood", choices=LIKELIHOODS, default=None,
                      help=_LIKELIHOOD_HELP)
    cmp_.add_argument("--out", type=Path, default=Path("natvi-compare"),
                      help="folder for the plot and CSV (default natvi-compare/)")
    cmp_.add_argument("--test-size", type=_fraction, default=0.3,
                      help="held-out fraction (default 0.3)")
    cmp_.add_argument("--quick", action="store_true", help="fewer iterations (a smoke test)")
    _add_common_fit_args(cmp_, inducing=50)
    cmp_.set_defaults(func=_cmd_compare)

    fit = sub.add_parser("fit", help="fit a sparse GP to a CSV file and save it",
                         epilog=_TORCHRUN_HELP)
    fit.add_argument("data", type=Path, help="CSV file with a header row")
    fit.add_argument("--target", required=True, help="name of the column to predict")
    fit.add_argument("--likelihood", choices=LIKELIHOODS, default=None,
                     help="default: bernoulli/softmax for class labels, else gaussian")
    fit.add_argument("--method", choices=("natgrad", "adam"), default="natgrad",
                     help="optimiser for q(u) (default natgrad)")
    fit.add_argument("--max-iter", type=_positive_int, default=None,
                     help="iteration limit (default: the estimator's, 2000); training stops "
                     "earlier once the ELBO settles, and warns if it reaches the limit first")
    fit.add_argument("--out", type=Path, default=Path("model.pt"),
                     help="where to save the model (default model.pt)")
    _add_common_fit_args(fit, inducing=50)
    fit.set_defaults(func=_cmd_fit)

    pred = sub.add_parser("predict", help="predict with a model saved by 'natvi fit'")
    pred.add_argument("model", type=Path, help="model file written by 'natvi fit'")
    pred.add_argument("data", type=Path, help="CSV file with the training feature columns")
    pred.add_argument("--out", type=Path, default=None, help="CSV file (default: stdout)")
    pred.set_defaults(func=_cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``natvi`` command. Run as a program (``argv=None``: the arguments come from
    ``sys.argv``) it first keeps freed memory inside its own process
    (:func:`natvi.retain_freed_memory`: each training iteration reuses its buffers instead of
    page-faulting them back in); called with an explicit ``argv`` it leaves the caller's process
    as it is."""
    if argv is None:
        retain_freed_memory()
    parser = build_parser()
    args: argparse.Namespace | None = None
    try:
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            parser.print_help()
            return 0
        if _under_torchrun() and args.command not in _DISTRIBUTED_COMMANDS:
            if int(os.environ["RANK"]) > 0:
                return 0  # e.g. 'natvi predict': one process does the job
        with _torchrun(args):
            return int(args.func(args))
    except (CLIError, DataError, WriteError) as err:
        cmd = f" {args.command}" if args is not None and args.command else ""
        print(f"natvi{cmd}: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, WriteError) else 2


if __name__ == "__main__":
    sys.exit(main())
