"""The closures :func:`natvi.fit` hands its optimisers: each evaluates the model's objective
through the training :class:`~natvi.strategy.Strategy` (so a data-parallel run reduces losses
and gradients the same way in every evaluation)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from natvi.optim.natural_gradient import NaturalGradient
from natvi.optim.safeguards import SafeguardWarning
from natvi.strategy import Strategy

__all__ = ["evaluate", "checking_closure", "profiling_closure"]


def evaluate(strategy: Strategy, model: nn.Module, X: Tensor, y: Tensor, num_data: int | None,
             grad_params: list[Tensor]) -> Tensor:
    """Zero every gradient, evaluate ``−ELBO``, back-propagate and reduce: the (reduced,
    detached) loss, with every gradient at the current parameters."""
    model.zero_grad(set_to_none=True)
    loss = -strategy.objective(model, X, y, num_data)
    loss.backward()
    return strategy.reduce(loss.detach(), grad_params)


def profiling_closure(
    strategy: Strategy, model: nn.Module, X: Tensor, y: Tensor, num_data: int | None,
    grad_params: list[Tensor], q_opt: NaturalGradient, loss_check: bool,
):
    """The closure :class:`~natvi.optim.lbfgs.AlternatingLBFGS` evaluates at each trial θ: q
    back to where it was when the L-BFGS step began, a natural step on q at θ (q re-optimised,
    so the line search and the curvature pairs see the profiled objective ``max_q ELBO(q, θ)``,
    not the far more curved ELBO at a frozen q), then the loss and every gradient at the new q.
    A rejected trial thus leaves no trace in q."""
    q_params = [p for p in model.variational_parameters() if p.requires_grad]
    start = [p.detach().clone() for p in q_params]

    def closure() -> Tensor:
        with torch.no_grad():
            for p, p0 in zip(q_params, start):
                p.copy_(p0)
        loss = evaluate(strategy, model, X, y, num_data, grad_params)
        if not bool(torch.isfinite(loss)):
            return loss
        with warnings.catch_warnings():  # a trial point too poor for q's step is rejected
            warnings.simplefilter("ignore", SafeguardWarning)  # anyway; its record remains
            q_opt.step(checking_closure(strategy, model, X, y, num_data, loss)
                       if loss_check else None)
        return evaluate(strategy, model, X, y, num_data, grad_params)

    return closure


def checking_closure(
    strategy: Strategy, model: nn.Module, X: Tensor, y: Tensor, num_data: int | None, loss: Tensor
):
    """A closure for NaturalGradient's loss check: the first call returns the loss whose
    gradients are already in ``.grad``; later calls evaluate the loss only (no backward)."""
    calls = 0

    def closure() -> Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            return loss.detach()
        with torch.no_grad():
            return strategy.reduce(-strategy.objective(model, X, y, num_data))

    return closure
