"""Stopping rules for :func:`natvi.fit` (its ``stop_when`` argument).

A stopping rule is any callable ``rule(history) -> bool`` called after every iteration with the
:class:`natvi.fit.History` so far; ``True`` ends the run.
"""

from __future__ import annotations

import math

from natvi._history import History

__all__ = ["ElboPlateau"]


class ElboPlateau:
    """Stop once the ELBO has settled: the best ELBO of the last ``n_iter_no_change`` iterations
    is within ``tol`` nats per datum of the best ELBO before them — neither better by more (still
    improving) nor worse by more (oscillating or falling away from its best).

    In symbols, with ``L_t`` the total ELBO at iteration ``t``, ``w = n_iter_no_change`` and
    ``T`` the iterations so far, stop when ``T ≥ start + w + 1`` and

        ``|max_{t > T−w} L_t − max_{start ≤ t ≤ T−w} L_t| < tol · num_data``.

    Comparing best values (not the last value with the one ``w`` iterations back) makes the rule
    indifferent to small oscillations and to the noise of a Monte Carlo or minibatch ELBO: one
    low iteration does not stop a run that is still improving, and one lucky iteration does not
    keep a settled run going. A run whose recent best stays well below its earlier best is not
    called converged: it goes on (and, in the estimators, warns at ``max_iter``).

    Args:
        tol: the least improvement, in nats per datum, over ``n_iter_no_change`` iterations
            that counts as progress (``>= 0``).
        n_iter_no_change: the window ``w`` (``>= 1``).
        num_data: ``N``, so that ``tol`` is per datum (``1`` makes ``tol`` a total).
        start: iterations not judged (e.g. a step-size warm-up), counted before the window.

    Example:
        >>> rule = ElboPlateau(tol=1e-3, n_iter_no_change=20, num_data=len(X))
        >>> natvi.fit(model, X, y, iterations=1000, stop_when=rule)
        >>> rule.stopped        # True: ended by the rule, not by the iteration limit
    """

    def __init__(self, tol: float, n_iter_no_change: int, num_data: int = 1, start: int = 0):
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}.")
        for name, value, least in (("n_iter_no_change", n_iter_no_change, 1),
                                   ("num_data", num_data, 1), ("start", start, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}.")
        self.tol, self.n_iter_no_change = float(tol), n_iter_no_change
        self.num_data, self.start = num_data, start
        self.stopped = False
        self.last_gain: float = math.inf
        """Per-datum change of the best ELBO over the latest window (``inf`` until judged)."""

    def __call__(self, history: History) -> bool:
        elbo, w = history.elbo, self.n_iter_no_change
        if len(elbo) < self.start + w + 1:
            return False
        before = max(elbo[self.start : len(elbo) - w])
        self.last_gain = (max(elbo[-w:]) - before) / self.num_data
        self.stopped = abs(self.last_gain) < self.tol
        return self.stopped

    def __repr__(self) -> str:
        return (f"ElboPlateau(tol={self.tol}, n_iter_no_change={self.n_iter_no_change}, "
                f"num_data={self.num_data}, start={self.start})")
