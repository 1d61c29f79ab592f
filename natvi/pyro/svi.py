"""``NaturalSVI``: Pyro's SVI with natural-gradient steps on the Gaussian guide."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.optim
import torch
from pyro import poutine
from pyro.infer.util import zero_grads
from torch import Tensor

from natvi.natgrad import expectation_gradient
from natvi.optim.safeguards import is_valid
from natvi.optim.schedules import as_schedule, evaluate
from natvi.parameterizations import DiagNatural, Natural
from natvi.pyro.guides import GaussianBlock, check_supported, find_blocks

__all__ = ["NaturalSVI", "StepReport"]

_UPDATES = ("natural", "stored")


@dataclass(frozen=True)
class StepReport:
    """What the last natural step did.

    Attributes:
        step: index of the step (0 for the first).
        lr: the step size γ asked for.
        lr_used: the γ actually taken, one per Gaussian block (``0.0`` where the step was skipped).
        backoffs: how many times γ was shrunk, summed over blocks.
        skipped: blocks left unchanged because no γ in the back-off sequence kept q valid.
    """

    step: int
    lr: float
    lr_used: tuple[float, ...]
    backoffs: int
    skipped: int


class NaturalSVI:
    """Stochastic variational inference with natural-gradient steps on a Gaussian guide.

    Like :class:`pyro.infer.SVI`: ``step(*args, **kwargs)`` runs ``loss.loss_and_grads(model,
    guide, *args, **kwargs)`` and returns the loss. The guide's Gaussian ``q = N(m, S)`` (see
    :mod:`natvi.pyro.guides` for the supported guides) is then updated by a natural-gradient step,
    computed from the gradients Pyro's loss left on the stored (unconstrained) params ``u``:

        ∇_η L = (∂u/∂η)ᵀ ∇_u L                       (natvi.expectation_gradient, one VJP)
        update="natural":  θ ← θ − γ ∇_η L,  u ← u(θ)  (exact inverse map back to storage)
        update="stored":   u ← u − γ F_u⁻¹ ∇_u L = u − γ (∂u/∂θ) ∇_η L   (one JVP)

    where θ are q's natural parameters and η its expectation parameters. Both agree to first order
    in γ; ``"natural"`` (default) is the textbook rule — with γ = 1 and an exact ELBO gradient of
    a conjugate model it lands on the exact posterior in one step. L is the total loss Pyro
    returns (for ``Trace_ELBO`` the negative ELBO over the whole data set). All other params
    (the model's) are updated by ``optim``, an ordinary Pyro optimiser.

    A step never leaves q invalid: if the new precision is not positive definite or holds NaN, γ
    is multiplied by ``backoff`` and the step retried (at most ``max_backoffs`` times), else that
    block is left unchanged and a warning is issued. ``last_report`` (a :class:`StepReport`),
    ``num_backoffs`` and ``num_skipped`` record what happened.

    Args:
        model: a Pyro model.
        guide: a supported Gaussian guide.
        lr: γ, a float in (0, ∞) or a callable ``step -> γ`` (e.g. a warm-up schedule).
        loss: an ELBO with ``loss_and_grads`` (default ``pyro.infer.Trace_ELBO()``), or a callable
            ``loss(model, guide, *args, **kwargs) -> Tensor`` that is differentiated here.
        optim: Pyro optimiser for the non-guide params; default ``pyro.optim.Adam({"lr": 1e-2})``.
        update: ``"natural"`` or ``"stored"`` (see above).
        backoff: factor in (0, 1) that shrinks γ after an invalid step.
        max_backoffs: how many times to shrink γ before skipping the block for this step.

    Example:
        >>> guide = pyro.infer.autoguide.AutoMultivariateNormal(model)
        >>> svi = NaturalSVI(model, guide, lr=0.5, loss=pyro.infer.Trace_ELBO(num_particles=8))
        >>> for _ in range(100):
        ...     loss = svi.step(x, y)
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        lr: float | Callable[[int], float] = 0.5,
        loss: object | None = None,
        optim: pyro.optim.PyroOptim | None = None,
        update: str = "natural",
        backoff: float = 0.5,
        max_backoffs: int = 20,
    ) -> None:
        check_supported(guide)
        as_schedule(lr)
        if update not in _UPDATES:
            raise ValueError(f"update must be one of {_UPDATES}, got {update!r}.")
        if not 0.0 < backoff < 1.0:
            raise ValueError(f"backoff must lie in (0, 1) (the factor that shrinks γ), got {backoff}.")
        if int(max_backoffs) < 0:
            raise ValueError(f"max_backoffs must be a non-negative integer, got {max_backoffs}.")
        if loss is not None and not (hasattr(loss, "loss_and_grads") or callable(loss)):
            raise ValueError(
                "loss must be a Pyro ELBO (with loss_and_grads) or a callable "
                f"loss(model, guide, *args, **kwargs) -> Tensor; got {type(loss).__name__}."
            )
        self.model = model
        self.guide = guide
        self.lr = lr
        self.loss = loss if loss is not None else pyro.infer.Trace_ELBO()
        self.optim = optim if optim is not None else pyro.optim.Adam({"lr": 1e-2})
        self.update = update
        self.backoff = float(backoff)
        self.max_backoffs = int(max_backoffs)
        self.num_steps = 0
        self.num_backoffs = 0
        self.num_skipped = 0
        self.last_report: StepReport | None = None

    def _loss_and_grads(self, *args, **kwargs) -> tuple[float, dict[str, Tensor]]:
        with poutine.trace(param_only=True) as capture:
            if hasattr(self.loss, "loss_and_grads"):
                loss = self.loss.loss_and_grads(self.model, self.guide, *args, **kwargs)
            else:
                loss_t = self.loss(self.model, self.guide, *args, **kwargs)
                loss_t.backward()
                loss = loss_t.detach()
        params = {n: s["value"].unconstrained() for n, s in capture.trace.nodes.items()}
        return float(loss), params

    def step(self, *args, **kwargs) -> float:
        """One natural step on the guide's Gaussian and one ``optim`` step on the rest.

        Returns:
            The loss before the step (as :meth:`pyro.infer.SVI.step`).
        """
        loss, params = self._loss_and_grads(*args, **kwargs)
        blocks = find_blocks(self.guide, set(params))
        lr = evaluate(as_schedule(self.lr), self.num_steps)
        updates, used, backoffs = [], [], 0
        for block in blocks:
            new, gamma, tries = self._block_update(block, [params[n] for n in block.names], lr)
            backoffs += tries
            used.append(gamma)
            if new is not None:
                updates.append((block, new))
        with torch.no_grad():
            for block, new in updates:
                for name, value in zip(block.names, new):
                    params[name].copy_(value.reshape(params[name].shape))
        in_blocks = {n for b in blocks for n in b.names}
        others = [u for n, u in params.items() if n not in in_blocks]
        if others:
            self.optim(others)
        zero_grads(set(params.values()))
        skipped = len(blocks) - len(updates)
        if skipped:
            warnings.warn(
                f"NaturalSVI step {self.num_steps}: {skipped} Gaussian block(s) left unchanged; "
                f"no step size down to γ = {lr * self.backoff ** self.max_backoffs:.3g} kept the "
                "covariance positive definite. Lower lr or use a warm-up schedule.",
                RuntimeWarning,
                stacklevel=2,
            )
        self.last_report = StepReport(self.num_steps, lr, tuple(used), backoffs, skipped)
        self.num_backoffs += backoffs
        self.num_skipped += skipped
        self.num_steps += 1
        return loss

    def _block_update(
        self, block: GaussianBlock, tensors: list[Tensor], lr: float
    ) -> tuple[tuple[Tensor, ...] | None, float, int]:
        """Candidate new values of one block, with back-off: ``(values or None, γ used, tries)``."""
        p = block.parameterization
        shape = (-1,) if block.flatten else None
        u = tuple((t.detach() if shape is None else t.detach().reshape(shape)) for t in tensors)
        grads = tuple(
            torch.zeros_like(x) if t.grad is None else t.grad.reshape(x.shape)
            for x, t in zip(u, tensors)
        )
        g_eta = expectation_gradient(p, u, grads)
        theta = p.to_natural(*u)
        direction = p.push_forward(theta, g_eta) if self.update == "stored" else None
        gamma = lr
        for tries in range(self.max_backoffs + 1):
            new = self._candidate(p, u, theta, g_eta, direction, gamma)
            if new is not None:
                return new, gamma, tries
            gamma *= self.backoff
        return None, 0.0, self.max_backoffs

    @staticmethod
    def _candidate(p, u, theta, g_eta, direction, gamma) -> tuple[Tensor, ...] | None:
        try:
            if direction is None:
                theta_new = tuple(t - gamma * g for t, g in zip(theta, g_eta))
                if not is_valid(DiagNatural() if p.diagonal else Natural(), theta_new):
                    return None
                new = p.from_natural(*theta_new)
            else:
                new = tuple(x - gamma * d for x, d in zip(u, direction))
                if not is_valid(p, new):
                    return None
        except ValueError:  # natvi's maps raise ValueError on a non-PD or singular matrix
            return None
        return new if all(bool(torch.isfinite(x).all()) for x in new) else None

    @torch.no_grad()
    def evaluate_loss(self, *args, **kwargs) -> float:
        """The loss without taking a step (as :meth:`pyro.infer.SVI.evaluate_loss`)."""
        if hasattr(self.loss, "loss"):
            return float(self.loss.loss(self.model, self.guide, *args, **kwargs))
        return float(self.loss(self.model, self.guide, *args, **kwargs))
