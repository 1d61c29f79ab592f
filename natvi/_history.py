"""What :func:`natvi.fit` returns: the per-iteration history and the result object."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from natvi.optim.engine import StepRecord

__all__ = ["History", "FitResult"]


@dataclass
class History:
    """Per-iteration records of a :func:`natvi.fit` run, one list entry per iteration.

    Attributes:
        iteration: 0-based iteration index.
        elbo: the (total, N/B-scaled for minibatches) ELBO *before* that iteration's update.
        time: cumulative wall-clock seconds of the training steps, excluding the callback,
            checkpoint writing and the progress bar.
        lr: the step size of the variational update (the scheduled natural-gradient γ, or
            Adam's learning rate for ``method="adam"``).
        events: safeguard events of that iteration (dicts, see
            :class:`natvi.optim.NaturalGradient`); empty when the step went as planned.
        metric: the callback's return value (``None`` without a callback).
    """

    iteration: list[int] = field(default_factory=list)
    elbo: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    events: list[list[dict]] = field(default_factory=list)
    metric: list[float | None] = field(default_factory=list)

    def append(self, **row: Any) -> None:
        for key, value in row.items():
            getattr(self, key).append(value)

    def append_step(
        self,
        *,
        iteration: int,
        elbo: float,
        time: float,
        records: Sequence[StepRecord] = (),
        lr: float | None = None,
        metric: float | None = None,
    ) -> None:
        """Append one iteration from the optimiser's step records
        (:class:`~natvi.optim.engine.StepRecord`; ``lr`` defaults to the first record's γ;
        the events are the records that are not "ok")."""
        if lr is None:
            lr = records[0].lr if records else float("nan")
        events = [r.as_event() for r in records if r.kind != "ok"]
        self.append(iteration=iteration, elbo=elbo, time=time, lr=lr, events=events, metric=metric)

    def postfix(self) -> dict[str, str]:
        """The progress bar's postfix for the last iteration: ELBO, γ and safeguard events."""
        if not len(self):
            return {}
        out = {"elbo": f"{self.elbo[-1]:.4g}", "lr": f"{self.lr[-1]:.3g}"}
        n_events = sum(len(e) for e in self.events)
        if n_events:
            out["events"] = str(n_events)
        return out

    def __len__(self) -> int:
        return len(self.iteration)

    def as_dict(self) -> dict[str, list]:
        """Plain lists (what checkpoints store; loads with ``weights_only=True``)."""
        return asdict(self)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per iteration (e.g. for ``csv.DictWriter``); events as a count."""
        return [
            {
                "iteration": self.iteration[i],
                "elbo": self.elbo[i],
                "time": self.time[i],
                "lr": self.lr[i],
                "events": len(self.events[i]),
                "metric": self.metric[i],
            }
            for i in range(len(self))
        ]


@dataclass
class FitResult:
    """The outcome of :func:`natvi.fit`.

    Attributes:
        model: the trained model (the same object that was passed in).
        history: per-iteration :class:`History`.
        variational_optimizer: the optimiser of q (:class:`natvi.optim.NaturalGradient`, or
            ``torch.optim.Adam`` for ``method="adam"``).
        hyper_optimizer: the optimiser of the hyperparameters (``None`` if all are fixed).
        stopped_early: whether ``stop_when`` ended the run before ``iterations``.
    """

    model: nn.Module
    history: History
    variational_optimizer: Any
    hyper_optimizer: Any
    stopped_early: bool = False

    @property
    def elbo(self) -> float:
        """The last recorded ELBO (``nan`` if no iteration ran)."""
        return self.history.elbo[-1] if self.history.elbo else float("nan")
