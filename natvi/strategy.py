"""How :func:`natvi.fit` sees its data: one process (:class:`Local`) or several (a strategy).

:func:`natvi.fit` knows nothing of ``torch.distributed``; it is handed a :class:`Strategy` that
answers five questions of the training loop:

- :meth:`~Strategy.prepare` — which rows does this process train on (and is the model ready)?
- :meth:`~Strategy.objective` — this process's share ``ℓ_r`` of the total ELBO;
- :meth:`~Strategy.reduce` — the total of a value over processes, and of the gradients in
  ``.grad`` after ``(−ℓ_r).backward()``;
- :meth:`~Strategy.agree` — do all processes stop now?
- :attr:`~Strategy.is_main` — does this process print and write files?

:class:`Local` (the default) answers them for one process, at no cost. The data-parallel
strategy over ``torch.distributed`` is :class:`natvi.distributed.DataParallel`.

Library code that calls :func:`natvi.fit` deep inside (the estimators, the CLI) is run under
another strategy with :func:`use`::

    with natvi.strategy.use(natvi.distributed.DataParallel(shard_data=True)):
        natvi.SparseGPClassifier().fit(X, y)
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["Strategy", "Local", "current", "use", "resolve"]


class Strategy:
    """The single-process answers; a multi-process strategy overrides them (see the module)."""

    is_main: bool = True

    def prepare(
        self, model: nn.Module, X: Tensor, y: Tensor, *, batch_size: int | None = None,
        checkpoint: Any = None,
    ) -> tuple[Tensor, Tensor]:
        """Check the set-up before training and return the rows this process trains on."""
        return X, y

    def objective(self, model: Any, X: Tensor, y: Tensor, num_data: int | None) -> Tensor:
        """``ℓ_r``: this process's share of the total ELBO (here: all of it)."""
        return model.elbo(X, y, num_data=num_data)

    def reduce(self, value: Tensor, params: Sequence[Tensor] = ()) -> Tensor:
        """The sum over processes of ``value`` (a detached scalar) and, in place, of the
        ``.grad`` of ``params``; returns the summed value."""
        return value

    def agree(self, stop: bool) -> bool:
        """Whether to stop, decided together (any process's ``True`` stops all)."""
        return stop

    def finish(self, model: nn.Module) -> None:
        """Called once after the last iteration."""

    def describe(self) -> dict | None:
        """Settings for the deprecated :func:`natvi.distributed.ambient` (None: one process)."""
        return None


class Local(Strategy):
    """One process trains on all of its data (:func:`natvi.fit`'s default)."""


_CURRENT: contextvars.ContextVar[Strategy | None] = contextvars.ContextVar(
    "natvi_strategy", default=None
)


def current() -> Strategy:
    """The strategy :func:`natvi.fit` uses when it is given none (:class:`Local` outside
    :func:`use`)."""
    return _CURRENT.get() or Local()


@contextlib.contextmanager
def use(strategy: Strategy) -> Iterator[Strategy]:
    """Within this block, :func:`natvi.fit` calls that are given no strategy use ``strategy``."""
    token = _CURRENT.set(_checked(strategy))
    try:
        yield strategy
    finally:
        _CURRENT.reset(token)


def resolve(strategy: Strategy | None, distributed: bool | None = None) -> Strategy:
    """The strategy :func:`natvi.fit` runs under: ``strategy``, else the deprecated
    ``distributed`` flag's, else :func:`current`."""
    if distributed is not None:
        warnings.warn(
            "fit(distributed=...) is deprecated; pass strategy=natvi.distributed.DataParallel() "
            "(or nothing, for one process). It will be removed in the next release.",
            DeprecationWarning, stacklevel=3,
        )
        if strategy is not None:
            raise ValueError("pass strategy= or the deprecated distributed=, not both.")
        if distributed:
            from natvi.distributed import DataParallel

            return DataParallel()
        return Local()
    return current() if strategy is None else _checked(strategy)


def _checked(strategy: Any) -> Strategy:
    if not isinstance(strategy, Strategy):
        raise ValueError(
            "strategy must be a natvi.strategy.Strategy (natvi.strategy.Local() or "
            f"natvi.distributed.DataParallel()), got {type(strategy).__name__}."
        )
    return strategy
