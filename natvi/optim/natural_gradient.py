"""``NaturalGradient``: a ``torch.optim.Optimizer`` for Gaussian variational distributions."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from natvi.natgrad import natural_gradient
from natvi.optim.safeguards import Safeguard, SafeguardWarning, Strict, as_safeguard, is_valid
from natvi.optim.schedules import as_schedule, evaluate
from natvi.parameterizations import Parameterization
from natvi.variational import GaussianVariational

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


def _as_groups(params: Any) -> list[dict]:
    if isinstance(params, (GaussianVariational, dict)):
        params = [params]
    if isinstance(params, Tensor):
        raise ValueError("params must be an iterable of tensors or groups, not a single tensor.")
    items = list(params)
    if not items:
        raise ValueError("NaturalGradient got an empty parameter list; pass q's coordinates.")
    if all(isinstance(x, Tensor) for x in items):
        return [{"params": items}]
    return [_as_group(x) for x in items]


def _loss_problem(before: Tensor, after: Tensor, monotone: bool) -> str | None:
    """Why the loss ``after`` a step is unacceptable (``None``: it is fine)."""
    after = torch.as_tensor(after).detach()
    if not bool(torch.isfinite(after).all()):
        return "nonfinite_loss"
    if monotone:
        before = torch.as_tensor(before).detach()
        rtol = 100.0 * torch.finfo(after.dtype).eps if after.is_floating_point() else 0.0
        if bool(after > before + rtol * before.abs().clamp_min(1.0)):
            return "loss_increase"
    return None


def _evaluate_after_step(closure: Callable[[], Tensor], before: Tensor, monotone: bool):
    """Re-evaluate the closure after a proposal; a model that cannot evaluate the new q (its
    own factorisations fail, e.g. in float32) rejects the proposal like a non-finite loss."""
    try:
        with torch.enable_grad():
            after = closure()
    except (ValueError, torch.linalg.LinAlgError):
        return "model_error"
    return _loss_problem(before, after, monotone)


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

    Every step is atomic: if ξ' is not a valid Gaussian (non-finite, outside the coordinates'
    domain, ``−2 θ2`` not positive definite), or — with a closure, re-evaluated after the
    proposal as in L-BFGS — the loss at ξ' is not finite (or, outside natural coordinates, has
    increased), the parameters are restored bit-identically and the safeguard decides
    (:mod:`natvi.optim.safeguards`: back off γ, the Riemannian iBLR step, or raise). Each
    intervention is an event: a dict in :attr:`events` (saved by :meth:`state_dict`) and a
    :class:`~natvi.optim.safeguards.SafeguardWarning`.

    Args:
        params: :class:`~natvi.variational.GaussianVariational` modules (one group each), dicts
            ``{"params": [ξ1, ξ2], "parameterization": p, "lr": ...}`` (per-group overrides), or
            one list of tensors (the coordinates of a single q, with ``parameterization=``).
        lr: γ, a positive float or a schedule ``step -> γ`` (:mod:`natvi.optim.schedules`).
        parameterization: default for groups that do not name one.
        safeguard: ``"backoff"`` (default), ``"riemannian"``, ``"none"``, or a
            :class:`~natvi.optim.safeguards.Safeguard`.

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
    ) -> None:
        as_schedule(lr)
        self.safeguard = as_safeguard(safeguard)
        self.events: list[dict] = []
        self.last_lr: list[float] = []
        defaults = {"lr": lr, "parameterization": parameterization}
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

    def _record(self, event: dict) -> None:
        self.events.append(event)
        warnings.warn(
            f"NaturalGradient step {event['step']} (group {event['group']}): {event['kind']} — "
            f"lr {event['lr']:.3g} -> {event['lr_used']:.3g} after {event['tries']} rejected "
            "proposals, to keep q valid and the loss finite.",
            SafeguardWarning,
            stacklevel=3,
        )

    def _try_group(self, group: dict, xi_old: tuple, nat: tuple, lr: float) -> tuple[float, int]:
        """Apply the first valid proposal; return ``(lr_used, tries)`` (``lr_used`` 0: none)."""
        p = group["parameterization"]
        for tries in range(self.safeguard.max_tries + 1):
            candidate = self.safeguard.propose(p, xi_old, nat, lr)
            if is_valid(p, candidate):
                for param, value in zip(group["params"], candidate):
                    param.copy_(value)
                return lr, tries
            lr *= self.safeguard.factor
        return 0.0, self.safeguard.max_tries + 1

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One natural step on every group that has gradients; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plans = []
        self.last_lr = []
        for index, group in enumerate(self.param_groups):
            params = group["params"]
            if all(q.grad is None for q in params):
                continue
            for q in params:
                self.state[q].setdefault("step", 0)
            t = self.state[params[0]]["step"]
            lr = evaluate(as_schedule(group["lr"]), t)
            self.last_lr.append(lr)
            grads = [torch.zeros_like(q) if q.grad is None else q.grad for q in params]
            nat = natural_gradient(group["parameterization"], params, grads)
            xi_old = tuple(q.detach().clone() for q in params)
            plans.append((index, group, t, lr, xi_old, nat))

        monotone = any(self.safeguard.is_monotone(plan[1]["parameterization"]) for plan in plans)
        lrs, results = [plan[3] for plan in plans], []
        for attempt in range(self.safeguard.max_tries + 1):
            results = [
                (used, tries + attempt)
                for plan, lr in zip(plans, lrs)
                for used, tries in [self._try_group(plan[1], plan[4], plan[5], lr)]
            ]
            if closure is None or not plans:
                break
            kind = _evaluate_after_step(closure, loss, monotone)
            if kind is None:
                break
            self._restore(plans)
            # Retry below the step size that was valid but gave a bad loss.
            lrs = [(used or lr) * self.safeguard.factor for (used, _), lr in zip(results, lrs)]
            results = [(0.0, tries) for _, tries in results]
            if attempt == self.safeguard.max_tries:
                self._event(plans[0], 0.0, attempt + 1, kind)

        for (index, group, _, lr, _, _), (lr_used, _) in zip(plans, results):
            if lr_used == 0.0 and isinstance(self.safeguard, Strict):
                self._restore(plans)
                raise ValueError(
                    f"the natural step with lr={lr:.3g} on group {index} "
                    f"({group['parameterization']!r}) would leave q invalid (not a Gaussian, or a "
                    "non-finite loss); q is unchanged. Use a smaller lr, a warm-up schedule, or "
                    "safeguard='backoff'."
                )
        for plan, (lr_used, tries) in zip(plans, results):
            if lr_used != plan[3]:
                self._event(plan, lr_used, tries, "backoff" if lr_used > 0 else "skipped")
            for q in plan[1]["params"]:
                self.state[q]["step"] = plan[2] + 1
        return loss

    def _event(self, plan: tuple, lr_used: float, tries: int, kind: str) -> None:
        index, _, t, lr, _, _ = plan
        self._record(
            {"step": t, "group": index, "kind": kind, "lr": lr, "lr_used": lr_used, "tries": tries}
        )

    @staticmethod
    def _restore(plans: list) -> None:
        for _, group, _, _, xi_old, _ in plans:
            for param, value in zip(group["params"], xi_old):
                param.copy_(value)

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
        sd["events"] = [dict(e) for e in self.events]
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore step counts, float learning rates and events; keep live configuration."""
        sd = dict(state_dict)
        events = sd.pop("events", [])
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
        self.events = [dict(e) for e in events]
