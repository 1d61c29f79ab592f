"""Step-size schedules for natural-gradient steps: ``step -> lr``.

A schedule is any callable taking the 0-based step count ``t`` of a parameter group and
returning the step size ``γ_t`` (a positive float). Built-ins:

- :class:`Constant` — ``γ_t = γ``.
- :class:`LogLinearWarmup` — the warm-up of Salimbeni, Eleftheriadis & Hensman (2018),
  ``γ_t = γ0 (γ1/γ0)^{min(t/K, 1)}``: γ rises geometrically from ``γ0`` to ``γ1`` over ``K``
  steps, then stays at ``γ1``.
- :class:`Decay` — ``γ_t = a / (1 + b t)``, the decay of DSNGD and SNGD.

Any plain function works too (``lambda t: 1.0 / (1 + t)``); :func:`as_schedule` turns a float
or a callable into a schedule and is what the optimisers call.

Example:
    >>> sched = LogLinearWarmup(gamma0=1e-4, gamma1=1e-1, K=5)
    >>> [round(sched(t), 6) for t in range(7)]
    [0.0001, 0.000398, 0.001585, 0.00631, 0.025119, 0.1, 0.1]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import numpy as np
import torch

__all__ = [
    "Schedule",
    "Constant",
    "LogLinearWarmup",
    "Decay",
    "as_schedule",
    "evaluate",
    "check_lr",
    "check_real",
]


def check_real(name: str, value: object) -> float:
    """``value`` as a float if it is a real number (``int``, ``float``, a numpy scalar) or a
    one-element real tensor; anything else — a string such as ``"1.0"``, a bool, a complex
    number, a tensor of several elements — raises ``ValueError``. The type check of every step
    size (:func:`check_lr`)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{name} must be a real number > 0 (a float or a one-element tensor), got {value!r} "
            f"of type {type(value).__name__}; pass e.g. {name}=1.0."
        )
    return float(value)


def check_lr(name: str, value: object) -> float:
    """``value`` as a float, checked to be a real number (:func:`check_real`), finite and > 0.

    Every optimiser checks its step sizes with this function (through :func:`as_schedule`), and
    so does :func:`evaluate` for the values a schedule returns.
    """
    value = check_real(name, value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}; pass e.g. {name}=1.0.")
    return value


class Schedule:
    """Base class: ``schedule(t) -> γ_t`` for the 0-based step count ``t``."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError


class Constant(Schedule):
    """``γ_t = lr`` for every step."""

    def __init__(self, lr: float) -> None:
        self.lr = check_lr("lr", lr)

    def __call__(self, step: int) -> float:
        return self.lr

    def __repr__(self) -> str:
        return f"Constant(lr={self.lr})"


class LogLinearWarmup(Schedule):
    """``γ_t = γ0 (γ1/γ0)^{min(t/K, 1)}``: log-linear warm-up from ``gamma0`` to ``gamma1``.

    The recipe of Salimbeni et al. (2018) for non-conjugate GP models: start with tiny natural
    steps (1e-4), reach ``gamma1`` (1e-1 in the paper; 1.0 is often fine with natvi's
    safeguards) after ``K`` steps (5–40 in the paper).

    Args:
        gamma0: first step size, > 0.
        gamma1: final step size, > 0.
        K: number of warm-up steps, an integer ≥ 1.
    """

    def __init__(self, gamma0: float = 1e-4, gamma1: float = 1e-1, K: int = 10) -> None:
        self.gamma0 = check_lr("gamma0", gamma0)
        self.gamma1 = check_lr("gamma1", gamma1)
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise ValueError(f"K (warm-up steps) must be an integer >= 1, got {K!r}.")
        self.K = K

    def __call__(self, step: int) -> float:
        frac = min(max(step, 0) / self.K, 1.0)
        return self.gamma0 * (self.gamma1 / self.gamma0) ** frac

    def __repr__(self) -> str:
        return f"LogLinearWarmup(gamma0={self.gamma0}, gamma1={self.gamma1}, K={self.K})"


class Decay(Schedule):
    """``γ_t = a / (1 + b t)``: a step size that decays like ``1/t`` (Robbins–Monro), the
    schedule of DSNGD and SNGD (Sánchez-López & Cerquides); ``b = 0`` is constant.

    Args:
        a: first step size, > 0.
        b: decay rate, ≥ 0.
    """

    def __init__(self, a: float = 1.0, b: float = 0.0) -> None:
        self.a = check_lr("a", a)
        if isinstance(b, bool) or not isinstance(b, int | float) or not 0 <= b < math.inf:
            raise ValueError(f"b (the decay rate of a/(1 + b t)) must be a number ≥ 0, got {b!r}.")
        self.b = float(b)

    def __call__(self, step: int) -> float:
        return self.a / (1.0 + self.b * max(step, 0))

    def __repr__(self) -> str:
        return f"Decay(a={self.a}, b={self.b})"


def as_schedule(lr: float | Callable[[int], float]) -> Callable[[int], float]:
    """A float becomes :class:`Constant`; a callable ``step -> lr`` is returned as it is.

    Raises:
        ValueError: ``lr`` is neither a positive finite number nor callable.
    """
    if callable(lr):
        return lr
    return Constant(check_lr("lr", lr))


def evaluate(schedule: Callable[[int], float], step: int) -> float:
    """``schedule(step)``, checked to be a positive finite float."""
    return check_lr(f"the learning-rate schedule's value at step {step}", schedule(step))
