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

Memory: see :func:`retain_freed_memory` (opt-in for a process of one's own; the ``natvi`` CLI
calls it).
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

import torch

__all__ = ["check_threads", "limit_threads", "retain_freed_memory"]


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


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def retain_freed_memory(max_block_bytes: int = 256 << 20) -> bool:
    """Keep freed large blocks inside the process instead of returning them to the OS (glibc).

    By default glibc hands every freed block above its (dynamic) mmap threshold back to the OS
    and trims the heap when its free top grows, so the ``[N, M]`` buffers of each training
    iteration are page-faulted and zeroed again at the next one. TensorFlow (GPflow) keeps its
    own pool; torch on CPU does not. This sets glibc's ``M_MMAP_THRESHOLD`` to
    ``max_block_bytes`` and ``M_TRIM_THRESHOLD`` to four times that, for the whole process and
    for good: the process then keeps up to its peak heap. Measured (issue 15, 2-core x86_64
    VM, one thread, processes with and without it alternating): one natural step at N = 3200
    −13 to −21 % (M = 50) and −9 to −14 % (M = 200), GPyTorch's NGD step −18 to −26 %; a
    ``natvi.fit`` iteration at N = 4000, M = 200 −25 % (41 → 31 ms).

    Returns whether the setting took effect (``False`` off glibc, e.g. macOS, Windows, musl).
    The ``natvi`` command calls it for its own process; in a script or notebook it is the
    user's choice (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment,
    or jemalloc / tcmalloc via ``LD_PRELOAD``, do the same from outside).

    Example:
        >>> natvi.retain_freed_memory()  # once, at the start of a training script
        True
    """
    if isinstance(max_block_bytes, bool) or not isinstance(max_block_bytes, int) or (
            max_block_bytes < 1):
        raise ValueError(f"max_block_bytes must be a positive integer; got {max_block_bytes!r}.")
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    limit = min(max_block_bytes, 2**31 - 1)
    trim = min(4 * limit, 2**31 - 1)
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
