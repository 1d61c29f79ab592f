"""Cases for the exponential-family tests: each family with a random valid θ, flattening
helpers, and a dense Fisher from autodiff (the independent reference)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from natvi.expfam import (
    Bernoulli,
    Categorical,
    Exponential,
    ExponentialFamily,
    Gamma,
    Multinomial,
    NaiveBayes,
    Poisson,
)

DT = torch.float64


@dataclass
class Case:
    name: str
    family: ExponentialFamily
    # (batch shape, generator) -> a random θ in the domain
    theta: Callable[[tuple[int, ...], torch.Generator], object]


def _randn(shape, gen, scale=1.0):
    return scale * torch.randn(shape, generator=gen, dtype=DT)


def _gamma_theta(batch, gen):
    alpha = 0.3 + 5 * torch.rand(batch, generator=gen, dtype=DT)
    beta = 0.2 + 3 * torch.rand(batch, generator=gen, dtype=DT)
    return Gamma().from_shape_rate(alpha, beta)


NB = NaiveBayes(3, [4, 2, 3])

CASES = [
    Case("bernoulli", Bernoulli(), lambda b, g: _randn(b, g, 2.0)),
    Case("poisson", Poisson(), lambda b, g: _randn(b, g)),
    Case("categorical", Categorical(), lambda b, g: _randn((*b, 4), g)),
    Case("multinomial", Multinomial(7), lambda b, g: _randn((*b, 3), g)),
    Case("gamma", Gamma(), _gamma_theta),
    Case(
        "exponential", Exponential(), lambda b, g: -0.2 - 3 * torch.rand(b, generator=g, dtype=DT)
    ),
    Case(
        "naive_bayes",
        NB,
        lambda b, g: (_randn((*b, 2), g), _randn((*b, 3, NB.n_columns), g)),
    ),
]


def as_tuple(x) -> tuple[Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def like(template, parts: tuple[Tensor, ...]):
    return parts if isinstance(template, tuple) else parts[0]


def random_like(x, gen: torch.Generator):
    return like(x, tuple(torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in as_tuple(x)))


def element(x, index: tuple[int, ...], event_dims: tuple[int, ...]):
    """One batch element of a parameter (tuple), given each part's number of event dims."""
    parts = tuple(t[index] if t.dim() > e else t for t, e in zip(as_tuple(x), event_dims))
    return like(x, parts)


def event_dims(case: Case) -> tuple[int, ...]:
    probe = as_tuple(case.theta((), torch.Generator().manual_seed(0)))
    return tuple(t.dim() for t in probe)


def flatten(x) -> Tensor:
    return torch.cat([t.reshape(-1) for t in as_tuple(x)])


def unflatten(v: Tensor, template):
    parts, i = [], 0
    for t in as_tuple(template):
        parts.append(v[i : i + t.numel()].reshape(t.shape))
        i += t.numel()
    return like(template, tuple(parts))


def dense_fisher(family: ExponentialFamily, theta) -> Tensor:
    """``∇²A(θ)`` for one (unbatched) θ, by double reverse-mode autodiff on the flat vector."""
    f = lambda v: family.log_partition(unflatten(v, theta))
    return torch.autograd.functional.hessian(f, flatten(theta).detach())
