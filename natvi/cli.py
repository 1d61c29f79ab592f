"""The ``natvi`` console script.

Each sub-command lives in a function ``_cmd_<name>(args) -> int``; bad user input raises
:class:`CLIError`, which :func:`main` prints as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import natvi

__all__ = ["main", "CLIError"]


class CLIError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""


def _cmd_demo(args: argparse.Namespace) -> int:
    from natvi import parameterizations

    print(f"natvi {natvi.__version__} — natural-gradient variational inference")
    print("The full demo (a sparse GP classifier, natural gradients vs Adam) is not built yet.")
    print("Available now:")
    print("  natvi.natural_gradient(parameterization, xi, grad_xi)")
    names = ", ".join(cls.__name__ for cls in parameterizations.BUILTIN)
    print(f"  natvi.parameterizations: {names}")
    print("  natvi.expfam: Gaussian, DiagGaussian (natural <-> expectation maps, KL, sampling)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="natvi", description="Natural-gradient variational inference for GP models."
    )
    parser.add_argument("--version", action="version", version=f"natvi {natvi.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the main job on an embedded dataset")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except CLIError as err:
        print(f"natvi {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
