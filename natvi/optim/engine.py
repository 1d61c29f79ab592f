r"""The atomic step shared by every natural-gradient optimiser in natvi.

Each optimiser (:class:`~natvi.optim.NaturalGradient` on Gaussian q,
:class:`~natvi.optim.MirrorDescent` on exponential families, :class:`natvi.pyro.NaturalSVI` on
Pyro guides) describes what it wants to change as :class:`Block`\ s — the live tensors, a
proposal rule ``γ -> candidate`` and a domain check declared by the family or parameterisation —
and hands them to :func:`atomic_step`, which

1. **proposes** ``candidate = block.propose(γ)`` for every block;
2. **validates** it (``block.valid(candidate)``; a proposal rule that raises ``ValueError`` is
   invalid too) and shrinks ``γ ← factor · γ`` until it is valid, at most ``max_tries`` times;
3. optionally **checks the loss**: ``closure()`` at the proposed point must be finite and, when
   ``monotone``, not above ``before``; otherwise every block is restored and retried below the
   step size that gave the bad loss;
4. **accepts or restores bit-identically** — the parameters *and* their ``.grad`` (a closure that
   ran ``backward()`` at a rejected point leaves no trace);
5. **records** one :class:`StepRecord` per block.

Without a closure nothing is written before it is known to be kept: the first valid proposal of
each block is copied into its tensors, and the tensors and ``.grad`` are never saved or
restored (a refused block is simply not written). With a closure the proposal must be in place
for the closure to see it, so the tensors and their ``.grad`` are saved once per step.

After a step with a closure, ``.grad`` — of every tensor the closure differentiates, not only
the blocks' — is the gradient at the accepted point: the closure was last evaluated there, or,
when the last evaluation was at a rejected proposal, the closure is evaluated once more at the
restored point (and the blocks' own ``.grad`` restored bit-identically). A hyperparameter
optimiser stepping next thus never sees the gradient of a point that was rejected.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from natvi._validation import all_finite

__all__ = ["Block", "StepRecord", "SafeguardWarning", "atomic_step", "loss_problem", "warn"]


class SafeguardWarning(RuntimeWarning):
    """A natural step was shrunk or skipped to keep q valid (or the loss finite / not rising)."""


@dataclass(frozen=True)
class StepRecord:
    """What one step did to one block (a param group, a Pyro Gaussian).

    Attributes:
        step: the block's 0-based step count.
        group: index of the block (param group) in its optimiser.
        lr: the step size γ the schedule asked for.
        lr_used: the γ taken (``0.0``: the block was left unchanged).
        tries: rejected proposals before the accepted one (or in all, when skipped).
        reason: why the last rejected proposal was rejected — ``"invalid"`` (outside the
            domain), ``"nonfinite_loss"``, ``"loss_increase"``, ``"model_error"`` — or ``None``.
    """

    step: int
    group: int
    lr: float
    lr_used: float
    tries: int
    reason: str | None = None

    @property
    def kind(self) -> str:
        """``"ok"`` (as planned), ``"backoff"`` (a smaller γ) or ``"skipped"`` (unchanged)."""
        if self.lr_used == 0.0:
            return "skipped"
        return "ok" if self.lr_used == self.lr and self.tries == 0 else "backoff"

    def as_event(self) -> dict:
        """The event dict of natvi ≤ 0.x (``step, group, kind, lr, lr_used, tries``)."""
        row = asdict(self)
        row.pop("reason")
        return {**row, "kind": self.kind}


@dataclass
class Block:
    """One unit of an atomic step.

    Attributes:
        params: the live tensors the step writes (a candidate entry is reshaped to each).
        propose: ``γ -> candidate`` (a tuple like ``params``, new tensors); may raise
            ``ValueError``. Whenever the engine calls it, ``params`` hold their values from
            the start of the step, so a proposal may read them instead of a saved copy.
        valid: the domain check of a candidate (declared by the family / parameterisation).
        lr: the step size asked for.
        step: the block's step count (for the record).
        group: the block's index (for the record).
        checks_finite: ``valid`` itself rejects a candidate with a NaN or an infinity (e.g.
            :meth:`~natvi.parameterizations.Parameterization.in_domain`), so the engine does not
            check that first.
    """

    params: Sequence[Tensor]
    propose: Callable[[float], Sequence[Tensor]]
    valid: Callable[[Sequence[Tensor]], bool]
    lr: float
    step: int = 0
    group: int = 0
    checks_finite: bool = False


def loss_problem(before: Tensor | float | None, after: Tensor | float, monotone: bool) -> str | None:
    """Why the loss ``after`` a proposal is unacceptable (``None``: it is fine)."""
    after = torch.as_tensor(after).detach()
    if not bool(torch.isfinite(after).all()):
        return "nonfinite_loss"
    if monotone and before is not None:
        before = torch.as_tensor(before, dtype=after.dtype).detach()
        rtol = 100.0 * torch.finfo(after.dtype).eps if after.is_floating_point() else 0.0
        if bool(after > before + rtol * before.abs().clamp_min(1.0)):
            return "loss_increase"
    return None


def _write(params: Sequence[Tensor], candidate: Sequence[Tensor]) -> None:
    """Copy a candidate into the live tensors (each entry reshaped to its tensor's shape)."""
    for p, value in zip(params, candidate):
        p.copy_(value if value.shape == p.shape else value.reshape(p.shape))


def _first_valid(block: Block, lr: float, budget: int, factor: float):
    """``(candidate, lr, tries)`` of the first valid proposal from ``lr`` down, or ``None``."""
    for tries in range(budget + 1):
        try:
            candidate = tuple(block.propose(lr))
            ok = (block.checks_finite or all_finite(*candidate)) and block.valid(candidate)
        except ValueError:
            ok = False
        if ok:
            return candidate, lr, tries
        lr *= factor
    return None


def _evaluate(closure: Callable[[], Tensor], before, monotone: bool):
    """``(reason or None, loss)`` at the proposed point."""
    try:
        with torch.enable_grad():
            after = closure()
    except (ValueError, torch.linalg.LinAlgError):  # the model cannot evaluate the new q
        return "model_error", None
    return loss_problem(before, after, monotone), after


@torch.no_grad()
def atomic_step(
    blocks: Sequence[Block],
    *,
    closure: Callable[[], Tensor] | None = None,
    before: Tensor | float | None = None,
    monotone: bool = False,
    factor: float = 0.5,
    max_tries: int = 20,
    strict: bool = False,
) -> tuple[list[StepRecord], Tensor | None]:
    """Propose, validate, check the loss, accept or restore, record (module docstring).

    Args:
        blocks: what to update; all blocks are proposed together and checked by one closure
            evaluation per attempt.
        closure: re-evaluates the loss at the proposed point (``None``: no loss check).
        before: the loss at the starting point (for the ``monotone`` check).
        monotone: reject a proposal whose loss exceeds ``before``.
        factor: γ is multiplied by this after a rejected proposal, in (0, 1).
        max_tries: the retry budget (per block for validity, and for loss checks).
        strict: if any block would be skipped, restore every block (``lr_used`` 0 for all).

    Returns:
        One :class:`StepRecord` per block, in order, and the closure's loss at the accepted
        point (``None`` when the closure was not evaluated there).
    """
    if closure is None:
        return _step_without_closure(blocks, factor, max_tries, strict), None
    saved = [
        [(p.detach().clone(), None if p.grad is None else p.grad.clone()) for p in b.params]
        for b in blocks
    ]

    def restore(index: int) -> None:
        for p, (value, grad) in zip(blocks[index].params, saved[index]):
            p.copy_(value)
            p.grad = grad if grad is None else grad.clone()

    after, stale = None, False
    lrs = [b.lr for b in blocks]
    tries = [0] * len(blocks)
    used = [0.0] * len(blocks)
    reasons: list[str | None] = [None] * len(blocks)
    for _ in range(max_tries + 1):
        for i, b in enumerate(blocks):
            found = _first_valid(b, lrs[i], max_tries - tries[i], factor)
            if found is None:
                used[i], tries[i], reasons[i] = 0.0, max_tries + 1, "invalid"
                continue
            candidate, used[i], extra = found
            tries[i] += extra
            if extra:
                reasons[i] = "invalid"
            _write(b.params, candidate)
        if closure is None or not any(used):
            break
        reason, loss = _evaluate(closure, before, monotone)
        stale = reason is not None  # .grad of params outside the blocks is at a rejected point
        if reason is None:
            after = loss
            break
        for i in range(len(blocks)):
            restore(i)
            if used[i]:  # retry below the step size that was valid but gave a bad loss
                lrs[i] = used[i] * factor
                tries[i] = min(tries[i] + 1, max_tries + 1)
                reasons[i], used[i] = reason, 0.0
    if strict and not all(used):
        stale, after = stale or after is not None, None
        used = [0.0] * len(blocks)
    for i in range(len(blocks)):
        if used[i] == 0.0:
            restore(i)
    if stale:  # re-evaluate at the restored point, then restore the blocks' .grad exactly
        with torch.enable_grad():
            closure()
        for i in range(len(blocks)):
            restore(i)
    records = [
        StepRecord(b.step, b.group, b.lr, used[i], tries[i], reasons[i] if tries[i] else None)
        for i, b in enumerate(blocks)
    ]
    return records, (after if all(used) else None)


def _step_without_closure(
    blocks: Sequence[Block], factor: float, max_tries: int, strict: bool
) -> list[StepRecord]:
    """The step with no loss to check: each block's first valid proposal is written, nothing is
    saved or restored (under ``strict`` nothing is written unless every block found one)."""
    found = [_first_valid(b, b.lr, max_tries, factor) for b in blocks]
    keep = not (strict and any(f is None for f in found))
    records = []
    for b, f in zip(blocks, found):
        if f is None:
            records.append(StepRecord(b.step, b.group, b.lr, 0.0, max_tries + 1, "invalid"))
            continue
        candidate, lr, tries = f
        if keep:
            _write(b.params, candidate)
        reason = "invalid" if tries else None
        records.append(StepRecord(b.step, b.group, b.lr, lr if keep else 0.0, tries, reason))
    return records


def warn(owner: str, records: Sequence[StepRecord], advice: str, stacklevel: int = 3) -> None:
    """One :class:`SafeguardWarning` per record that is not ``"ok"``."""
    for r in records:
        if r.kind == "ok":
            continue
        warnings.warn(
            f"{owner} step {r.step} (group {r.group}): {r.kind} ({r.reason}) — lr {r.lr:.3g} -> "
            f"{r.lr_used:.3g} after {r.tries} rejected proposals. {advice}",
            SafeguardWarning,
            stacklevel=stacklevel,
        )
