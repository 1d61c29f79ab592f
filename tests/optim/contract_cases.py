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

from natvi.linalg import CG, OU
from natvi.optim import LogLinearWarmup, NaturalGradient
from natvi.parameterizations import MeanCholesky, Natural
from tests.optim.toy_models import LogisticReg, classification_data


def _mirror_case() -> OptimCase:
    from natvi.expfam import Gamma
    from natvi.optim.mirror import MirrorDescent

    fam = Gamma()
    x = torch.linspace(0.2, 3.0, 40, dtype=torch.float64)
    theta = [torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in (0.0, -1.0)]
    opt = MirrorDescent(theta, family=fam, lr=0.5)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = fam.log_partition(tuple(theta)) - theta[0] * x.log().mean() - theta[1] * x.mean()
        loss.backward()
        return loss

    return OptimCase(opt, closure, theta)


def _mlr_case(name: str) -> Callable[[], OptimCase]:
    """DSNGD (data observed after the step) or SNGD (its Fisher needs the batch first) on a
    fixed batch of a 3-class MLR."""

    def factory() -> OptimCase:
        from natvi.optim import dsngd

        gen = torch.Generator().manual_seed(0)
        x = torch.stack([torch.randint(0, r, (30,), generator=gen) for r in (3, 2)], -1)
        y = (x[:, 0] + x[:, 1]) % 3
        beta = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        W = torch.nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
        extra = {"damping": 1e-2} if name == "SNGD" else {}
        opt = getattr(dsngd, name)([beta, W], n_classes=3, cardinalities=(3, 2), lr=0.5,
                                   decay=0.5, **extra)
        opt.observe(x, y)
        phi = opt.family.one_hot(x)

        def closure() -> Tensor:
            opt.zero_grad()
            logits = torch.cat([phi @ W.T + beta, torch.zeros(30, 1, dtype=torch.float64)], -1)
            loss = torch.nn.functional.cross_entropy(logits, y)
            loss.backward()
            return loss

        return OptimCase(opt, closure, [beta, W])

    return factory


def _ngd_case(solver_factory, **kw) -> Callable[[], OptimCase]:
    """NGD on a small MLP with cross-entropy; the batch is observed once."""

    def factory() -> OptimCase:
        from natvi.optim import NGD

        g = torch.Generator().manual_seed(0)
        X = torch.randn(12, 3, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (12,), generator=g)
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)
        ).double()
        opt = NGD(model, torch.nn.functional.cross_entropy, solver=solver_factory(), **kw)
        opt.observe(X, y)

        def closure() -> Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(X), y)
            loss.backward()
            return loss

        return OptimCase(opt, closure, list(model.parameters()))

    return factory


@dataclass
class OptimCase:
    """An optimiser, a torch-style closure (zero_grad, loss, backward, return loss) and the
    tensors whose values make up the optimisation state besides the optimiser's own."""

    optimizer: torch.optim.Optimizer
    closure: Callable[[], Tensor]
    params: list[Tensor]


def _natural_gradient_case(parameterization, lr, num_data=None) -> Callable[[], OptimCase]:
    def factory() -> OptimCase:
        X, y = classification_data(N=60)
        model = LogisticReg(3, parameterization)
        opt = NaturalGradient.for_model(model, lr=lr, num_data=num_data)

        def closure() -> Tensor:  # with num_data=N, the per-datum loss (GPyTorch's convention)
            opt.zero_grad()
            loss = -model.elbo(X, y) / (num_data or 1)
            loss.backward()
            return loss

        return OptimCase(opt, closure, list(model.q.xi()))

    return factory


CASES: list[tuple[str, Callable[[], OptimCase]]] = [
    ("NaturalGradient-Natural-lr0.5", _natural_gradient_case(Natural(), 0.5)),
    ("NaturalGradient-Natural-num_data", _natural_gradient_case(Natural(), 0.5, num_data=60)),
    (
        "NaturalGradient-MeanCholesky-warmup",
        _natural_gradient_case(MeanCholesky(), LogLinearWarmup(1e-2, 1.0, K=3)),
    ),
    ("MirrorDescent-Gamma", _mirror_case),
    ("DSNGD-MLR", _mlr_case("DSNGD")),
    ("SNGD-MLR", _mlr_case("SNGD")),
    ("NGD-CG-warmup-LM", _ngd_case(lambda: CG(tol=1e-12), lr=LogLinearWarmup(0.1, 1.0, K=3),
                                   damping=0.1, adaptive_damping=True)),
    ("TNGD-OU-delay", _ngd_case(lambda: OU(dt=0.1, num_samples=20, noise=0.0, method="exact"),
                                lr=0.5, damping=0.1, delay=0.5)),
]
