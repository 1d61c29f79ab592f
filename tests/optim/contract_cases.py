"""Factories for the optimiser contract test (``tests/optim/test_contract.py``).

Each entry of :data:`CASES` is ``(name, factory)``; ``factory()`` builds, deterministically and
from scratch, an :class:`OptimCase` on a small problem. Calling the factory twice must give two
independent copies in the same initial state (the state_dict round-trip test relies on it).
Engineers adding a natvi optimiser append one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from natvi.optim import LogLinearWarmup, NaturalGradient
from natvi.parameterizations import MeanCholesky, Natural
from tests.optim.toy_models import LogisticReg, classification_data


@dataclass
class OptimCase:
    """An optimiser, a torch-style closure (zero_grad, loss, backward, return loss) and the
    tensors whose values make up the optimisation state besides the optimiser's own."""

    optimizer: torch.optim.Optimizer
    closure: Callable[[], Tensor]
    params: list[Tensor]


def _natural_gradient_case(parameterization, lr) -> Callable[[], OptimCase]:
    def factory() -> OptimCase:
        X, y = classification_data(N=60)
        model = LogisticReg(3, parameterization)
        opt = NaturalGradient.for_model(model, lr=lr)

        def closure() -> Tensor:
            opt.zero_grad()
            loss = -model.elbo(X, y)
            loss.backward()
            return loss

        return OptimCase(opt, closure, list(model.q.xi()))

    return factory


CASES: list[tuple[str, Callable[[], OptimCase]]] = [
    ("NaturalGradient-Natural-lr0.5", _natural_gradient_case(Natural(), 0.5)),
    (
        "NaturalGradient-MeanCholesky-warmup",
        _natural_gradient_case(MeanCholesky(), LogLinearWarmup(1e-2, 1.0, K=3)),
    ),
]
