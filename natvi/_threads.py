"""The thread policy of natvi's long-running entry points (``fit``, the estimators, the CLI).

Small variational GP problems are dispatch-bound: thousands of small ``M × M`` and ``[N, K]``
operations per iteration, each too small for intra-op threads to pay off. When the cores are
shared, torch's default (one thread per core) makes every one of those operations wait for a
busy core: on a 2-core machine with one other busy process, 20 iterations of
``SparseGPClassifier.fit`` on breast cancer took 16.7 s with torch's default 2 threads and 1.7 s
with one (idle machine: 1.3 s vs 1.4 s; issue 15). So :func:`natvi.fit` runs with **one** torch thread by
default (``threads=1``) and restores the caller's setting afterwards; ``threads=None`` leaves
torch's setting alone (large M on a machine of one's own: try ``threads=os.cpu_count()``).
The estimators and the ``natvi`` CLI train through :func:`natvi.fit` and inherit the policy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["check_threads", "limit_threads"]


def check_threads(threads: int | None) -> int | None:
    """``None`` or a positive integer (``ValueError`` otherwise)."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(
            f"threads must be a positive integer (torch intra-op threads) or None (leave torch's "
            f"setting alone); got {threads!r}."
        )
    return threads


def limit_threads(threads: int | None) -> Callable[[], None]:
    """Set torch's intra-op threads to ``threads`` (``None``: no change); return the restorer.

    Example:
        >>> restore = limit_threads(1)
        >>> try:
        ...     pass  # the work
        ... finally:
        ...     restore()
    """
    threads = check_threads(threads)
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)

    def restore() -> None:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)

    return restore
