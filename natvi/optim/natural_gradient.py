"""``NaturalGradient``: a ``torch.optim.Optimizer`` for Gaussian variational distributions."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from natvi.natgrad import natural_gradient
from natvi.optim.engine import (
    Block,
    SafeguardWarning,
    StepRecord,
    atomic_step,
    loss_problem,
    warn,
)
from natvi.optim.safeguards import Safeguard, Strict, as_safeguard
from natvi.optim.schedules import as_schedule, evaluate
from natvi.parameterizations import Parameterization
from natvi.variational import GaussianVariational, owner

__all__ = ["NaturalGradient"]

LR = float | Callable[[int], float]


def _as_group(item: Any) -> dict:
    if isinstance(item, GaussianVariational):
        return {"params": list(item.xi()), "parameterization": item.parameterization}
    if isinstance(item, dict):
        group = dict(item)
        if isinstance(group.get("params"), GaussianVariational):
            q = group["params"]
            group["params"] = list(q.xi())
            group.setdefault("parameterization", q.parameterization)
        return group
    raise ValueError(
        "params must be GaussianVariational modules, dicts {'params': [...], "
        "'parameterization': ...}, or one list of tensors (the coordinates of a single q); "
        f"got an item of type {type(item).__name__}."
    )


def _groups_of_tensors(tensors: list[Tensor]) -> list[dict]:
    """Bare tensors: one group per q they are coordinates of (e.g. GPyTorch's
    ``model.variational_parameters()``), else one group of untagged tensors."""
    qs = [owner(t) for t in tensors]
    if all(q is None for q in qs):
        return [{"params": tensors}]
    if any(q is None for q in qs):
        raise ValueError(
            "NaturalGradient got a mix of natvi q coordinates and other tensors; pass only q's "
            "coordinates (model.variational_parameters() of a natvi model) and give the other "
            "parameters to an ordinary optimiser."
        )
    groups: dict[int, GaussianVariational] = {}
    for q in qs:
        groups.setdefault(id(q), q)
    ids = {id(t) for t in tensors}
    for q in groups.values():
        missing = [n for n, x in zip(q.parameterization.names, q.xi()) if id(x) not in ids]
        if missing:
            raise ValueError(
                f"NaturalGradient got only some coordinates of a q in {q.parameterization!r} "
                f"(missing {missing}); a natural step updates all of them together."
            )
    return [_as_group(q) for q in groups.values()]


def _as_groups(params: Any) -> list[dict]:
    if isinstance(params, (GaussianVariational, dict)):
        params = [params]
    if isinstance(params, Tensor):
        raise ValueError("params must be an iterable of tensors or groups, not a single tensor.")
    items = list(params)
    if not items:
        raise ValueError("NaturalGradient got an empty parameter list; pass q's coordinates.")
    if all(isinstance(x, Tensor) for x in items):
        return _groups_of_tensors(items)
    return [_as_group(x) for x in items]


class NaturalGradient(Optimizer):
    r"""Natural-gradient descent on Gaussian variational distributions, in their own coordinates.

    Each parameter group is the coordinate tuple ξ of one Gaussian q (possibly batched,
    ``[..., M]`` and ``[..., M, M]``) together with its parameterisation. With ``L`` the
    **negative** ELBO (so ``.grad`` holds ``∇_ξ L``, as after ``(-model.elbo(X, y)).backward()``),
    step ``t`` of a group is

        ``ñ = F_ξ⁻¹ ∇_ξ L = natvi.natural_gradient(p, ξ, ∇_ξ L)``
        ``ξ ← ξ − γ_t ñ``                       (``γ_t = lr(t)`` for a schedule)

    In :class:`~natvi.parameterizations.Natural` coordinates ``ñ = ∇_η L`` and, for a
    conjugate model with ``L`` the *total* negative ELBO, ``γ = 1`` lands on the exact optimum.
    A loss that is the total divided by N (GPyTorch's ``VariationalELBO``) is declared with
    ``num_data=N``, exactly as for GPyTorch's ``NGD``: the step is then ``ξ ← ξ − γ_t N ñ``, so
    GPyTorch's lr values mean the same step and ``γ = 1`` is still the conjugate optimum.

    Every step is atomic: if ξ' is not a valid Gaussian (non-finite, outside the coordinates'
    domain, ``−2 θ2`` not positive definite), or — with a closure, re-evaluated after the
    proposal as in L-BFGS — the loss at ξ' is not finite (or, outside natural coordinates, has
    increased), the parameters are restored bit-identically and the safeguard decides
    (:mod:`natvi.optim.safeguards`: back off γ, the Riemannian iBLR step, or raise); the step
    runs on natvi's atomic-step engine (:mod:`natvi.optim.engine`), which also leaves ``.grad``
    at the accepted point. Every step leaves one :class:`~natvi.optim.engine.StepRecord` per
    group in :attr:`step_records` (:attr:`last_records` for the last step; saved by
    :meth:`state_dict`); each intervention is also warned about
    (:class:`~natvi.optim.SafeguardWarning`) and listed in :attr:`events` (dicts). In natural
    coordinates, where the loss is not checked, a loss that rises under a closure is warned
    about once.

    Args:
        params: :class:`~natvi.variational.GaussianVariational` modules (one group each), dicts
            ``{"params": [ξ1, ξ2], "parameterization": p, "lr": ...}`` (per-group overrides), or
            a list of tensors: q coordinates (``model.variational_parameters()``; one group per
            q, found through the tag :class:`~natvi.variational.GaussianVariational` puts on its
            coordinates) or untagged tensors of one q (with ``parameterization=``).
        lr: γ, a positive float or a schedule ``step -> γ`` (:mod:`natvi.optim.schedules`).
        parameterization: default for groups that do not name one.
        safeguard: ``"backoff"`` (default), ``"riemannian"``, ``"none"``, or a
            :class:`~natvi.optim.safeguards.Safeguard`.
        num_data: N when the loss is the total divided by N (default ``None``: the total).

    Example:
        >>> opt = NaturalGradient.for_model(model, lr=1.0)
        >>> opt.zero_grad(); (-model.elbo(X, y)).backward(); opt.step()
    """

    def __init__(
        self,
        params: Any,
        lr: LR = 1.0,
        *,
        parameterization: Parameterization | None = None,
        safeguard: str | Safeguard | None = "backoff",
        num_data: int | None = None,
    ) -> None:
        as_schedule(lr)
        self.safeguard = as_safeguard(safeguard)
        self.step_records: list[StepRecord] = []
        self.last_records: list[StepRecord] = []
        self._warned_rise = False
        if num_data is not None and (
            isinstance(num_data, bool) or not isinstance(num_data, numbers.Integral)
            or num_data < 1
        ):
            raise ValueError(
                f"num_data must be a positive integer (N, the data size), got {num_data!r}."
            )
        defaults = {"lr": lr, "parameterization": parameterization, "num_data": num_data}
        super().__init__(_as_groups(params), defaults)

    @classmethod
    def for_model(
        cls, model: nn.Module, lr: LR = 1.0, safeguard: str | Safeguard | None = "backoff", **kw
    ) -> NaturalGradient:
        """One group per :class:`~natvi.variational.GaussianVariational` in ``model.modules()``."""
        qs = [m for m in model.modules() if isinstance(m, GaussianVariational)]
        if not qs:
            raise ValueError(
                f"{type(model).__name__} holds no natvi.GaussianVariational module, so there is "
                "nothing for natural gradients to update; build the model with a natvi "
                "variational distribution (natvi.gp.SVGP, or the GPyTorch interop one)."
            )
        return cls(qs, lr=lr, safeguard=safeguard, **kw)

    def add_param_group(self, param_group: dict) -> None:
        group = _as_group(param_group)
        p = group.get("parameterization", self.defaults.get("parameterization"))
        if not isinstance(p, Parameterization):
            raise ValueError(
                "every NaturalGradient group needs a parameterization (natvi.parameterizations); "
                f"got {p!r}. Pass GaussianVariational modules or parameterization=Natural() etc."
            )
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if len(params) != len(p.names):
            raise ValueError(
                f"a group in {p!r} needs {len(p.names)} tensors {p.names}, got {len(params)}."
            )
        as_schedule(group.get("lr", self.defaults["lr"]))
        self.safeguard.check(p)
        group["params"] = params
        super().add_param_group(group)

    @property
    def events(self) -> list[dict]:
        """The safeguard's interventions as event dicts (``step, group, kind, lr, lr_used,
        tries``): the :attr:`step_records` whose kind is not ``"ok"``."""
        return [r.as_event() for r in self.step_records if r.kind != "ok"]

    @property
    def last_lr(self) -> list[float]:
        """Deprecated: read ``[r.lr for r in opt.last_records]``."""
        warnings.warn(
            "NaturalGradient.last_lr is deprecated; use [r.lr for r in opt.last_records] "
            "(natvi.optim.engine.StepRecord).",
            DeprecationWarning,
            stacklevel=2,
        )
        return [r.lr for r in self.last_records]

    def _block(self, index: int, group: dict) -> Block | None:
        params = group["params"]
        if all(q.grad is None for q in params):
            return None
        for q in params:
            self.state[q].setdefault("step", 0)
        t = self.state[params[0]]["step"]
        lr = group["lr"]  # (a plain positive float as it is; anything else through the checks)
        if not (type(lr) is float and 0.0 < lr < math.inf):
            lr = evaluate(as_schedule(lr), t)
        p = group["parameterization"]
        grads = [torch.zeros_like(q) if q.grad is None else q.grad for q in params]
        nat = natural_gradient(p, params, grads)
        scale = float(group.get("num_data") or 1)

        def propose(gamma: float) -> tuple[Tensor, ...]:  # params hold ξ (engine's guarantee)
            return self.safeguard.propose(p, params, nat, gamma * scale)

        # (the base class's in_domain checks finiteness itself; an override may not)
        finite = type(p).in_domain is Parameterization.in_domain
        return Block(params, propose, lambda xi: p.in_domain(*xi), lr, t, index, finite)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One natural step on every group that has gradients; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        blocks = [b for i, g in enumerate(self.param_groups) if (b := self._block(i, g))]
        monotone = any(
            self.safeguard.is_monotone(self.param_groups[b.group]["parameterization"])
            for b in blocks
        )
        records, after = atomic_step(
            blocks,
            closure=closure,
            before=loss,
            monotone=monotone,
            factor=self.safeguard.factor,
            max_tries=self.safeguard.max_tries,
            strict=isinstance(self.safeguard, Strict),
        )
        if isinstance(self.safeguard, Strict) and any(r.kind == "skipped" for r in records):
            r = next(r for r in records if r.kind == "skipped")
            raise ValueError(
                f"the natural step with lr={r.lr:.3g} on group {r.group} "
                f"({self.param_groups[r.group]['parameterization']!r}) would leave q invalid (not "
                f"a Gaussian, or a non-finite loss: {r.reason}); q is unchanged. Use a smaller "
                "lr, a warm-up schedule, or safeguard='backoff'."
            )
        for b in blocks:  # (after the Strict refusal: a refused step leaves the schedule too)
            for q in b.params:
                self.state[q]["step"] = b.step + 1
        self.last_records = records
        self.step_records.extend(records)
        advice = "Kept q valid and the loss finite."
        if closure is None:
            advice += " Without a closure the loss was not checked; pass step(closure)."
        warn("NaturalGradient", records, advice, stacklevel=5)
        if after is not None and not monotone and loss is not None and not self._warned_rise:
            if loss_problem(loss, after, monotone=True) == "loss_increase":
                self._warned_rise = True
                warnings.warn(
                    f"NaturalGradient: the loss rose from {float(loss):.6g} to {float(after):.6g} "
                    f"at step {blocks[0].step} (lr {blocks[0].lr:.3g}). natvi keeps q valid but "
                    "does not check the loss in natural coordinates; use a smaller lr (with a "
                    "per-datum loss, num_data=N), a warm-up schedule, or "
                    "safeguard=Backoff(monotone=True). This warning is shown once.",
                    SafeguardWarning,
                    stacklevel=4,
                )
        return loss

    def state_dict(self) -> dict[str, Any]:
        """Torch's state dict (per-parameter step counts) plus the safeguard ``events``.

        Group entries that are configuration objects (the parameterisation, a schedule) are
        stored by name only, so the dict loads with ``torch.load(..., weights_only=True)``.
        """
        sd = super().state_dict()
        for g in sd["param_groups"]:
            g["parameterization"] = type(g["parameterization"]).__name__
            if callable(g["lr"]):
                g["lr"] = repr(g["lr"])
        sd["step_records"] = [asdict(r) for r in self.step_records]
        sd["events"] = self.events
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore step counts, float learning rates and events; keep live configuration."""
        sd = dict(state_dict)
        events = sd.pop("events", [])
        rows = sd.pop("step_records", None)
        saved = sd["param_groups"]
        if len(saved) != len(self.param_groups):
            raise ValueError(
                f"the state dict has {len(saved)} parameter groups but this optimiser has "
                f"{len(self.param_groups)}; build the optimiser for the same model first."
            )
        groups = []
        for i, (old, live) in enumerate(zip(saved, self.param_groups)):
            name = type(live["parameterization"]).__name__
            if old.get("parameterization", name) != name:
                raise ValueError(
                    f"group {i} was saved in {old['parameterization']} coordinates but is now "
                    f"{name}; load the state into an optimiser over the same parameterisation."
                )
            g = dict(old, parameterization=live["parameterization"])
            if isinstance(old.get("lr"), str) or callable(live["lr"]):
                g["lr"] = live["lr"]
            groups.append(g)
        sd["param_groups"] = groups
        super().load_state_dict(sd)
        if rows is not None:
            self.step_records = [StepRecord(**r) for r in rows]
        else:  # a state dict of natvi < 0.3 holds the events only
            self.step_records = [StepRecord(**_event_to_row(e)) for e in events]


def _event_to_row(event: dict) -> dict:
    row = {k: event[k] for k in ("step", "group", "lr", "lr_used", "tries")}
    return {**row, "reason": event.get("kind")}
