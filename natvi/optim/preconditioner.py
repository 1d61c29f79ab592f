"""``FisherPreconditioner``: the natural gradient written into ``.grad``, so that a stock torch
optimiser takes natural-gradient steps (GPyTorch's idea, for any torch model).

After ``loss.backward()`` the parameters hold ``g = ∇_θ L``. :meth:`FisherPreconditioner.apply`
replaces it by ``ñ ≈ (λ I + G)⁻¹ g``, with ``G`` the GGN (or empirical Fisher) of the loss on a
batch (:class:`natvi.fisher.Curvature`), solved by any ``natvi.linalg`` solver. Then

- ``torch.optim.SGD(params, lr)`` takes ``θ ← θ − lr ñ``: NGD, and with
  ``solver=natvi.linalg.OU(...)`` Thermodynamic NGD (TNGD, Donatella et al. 2024);
- ``torch.optim.Adam(params, lr, betas=(0, 0))`` takes ``θ ← θ − lr ñ / (|ñ| + ε)``: TNGD-Adam.

Example:
    >>> pre = FisherPreconditioner(model, F.cross_entropy, damping=0.05,
    ...                            solver=natvi.linalg.OU(dt=0.2, num_samples=250, noise=1e-5))
    >>> sgd = torch.optim.SGD(model.parameters(), lr=0.3)
    >>> for x, y in batches:
    ...     sgd.zero_grad()
    ...     F.cross_entropy(model(x), y).backward()
    ...     pre.apply(x, y)                     # .grad ← (λ I + G)⁻¹ .grad
    ...     sgd.step()
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from natvi.fisher import Curvature, as_loss, flat_params
from natvi.linalg import CG, OU, Cholesky, LinearOperator, Woodbury

__all__ = ["FisherPreconditioner"]

FORMS = ("auto", "matrix_free", "low_rank", "dense")
WARM_STARTS = ("previous", "gradient", "zero")


class FisherPreconditioner:
    """``.grad ← (λ I + G)⁻¹ .grad`` for the trainable parameters of ``model``.

    ``G`` is never formed unless the solver needs it: CG gets matrix-free products
    (``torch.func`` JVP/VJP), Woodbury and OU get ``λ I + U Uᵀ`` (``U [P, B d]``), Cholesky its
    dense form. With the OU solver the system is solved by simulating
    ``dx = −(A x − g) dt + √(2 κ0) dW`` for analog time ``t`` from the warm start; ``delay = t_d``
    models a device that keeps running the *previous* system for ``t_d`` while the digital side
    computes the next ``g, G``; that state warm-starts the next solve.

    Args:
        model: the ``nn.Module``; all its trainable parameters are preconditioned together.
        loss: ``loss(outputs, targets) -> scalar``, the batch mean of a per-example loss
            (default ``F.cross_entropy``; see :mod:`natvi.fisher`).
        damping: ``λ > 0``.
        solver: a ``natvi.linalg`` solver; default ``CG(tol=1e-6, max_iter=100)``.
        curvature: ``"ggn"`` or ``"empirical"`` (empirical Fisher).
        form: how ``A = λ I + G`` reaches the solver: ``"auto"``, ``"matrix_free"``,
            ``"low_rank"`` or ``"dense"``.
        warm_start: ``x0`` of iterative solvers: ``"previous"`` (the last ñ; ``g`` at first),
            ``"gradient"`` or ``"zero"``.
        delay: ``t_d ≥ 0`` in τ (OU solver only).
        state: where per-parameter state (the last ñ, the delayed device state) is kept; an
            optimiser passes its own ``state`` so that its ``state_dict`` holds it.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Callable[[Tensor, Tensor], Tensor] | str | None = None,
        damping: float = 1e-3,
        *,
        solver: Any = None,
        curvature: str = "ggn",
        form: str = "auto",
        warm_start: str = "previous",
        delay: float = 0.0,
        state: dict | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"model must be an nn.Module (the curvature needs the model's outputs), got "
                f"{type(model).__name__}; pass the model itself, not model.parameters()."
            )
        self.loss = as_loss(loss, stacklevel=4)
        _positive("damping", damping)
        solver = CG(tol=1e-6, max_iter=100) if solver is None else solver
        if not callable(getattr(solver, "solve", None)):
            raise ValueError(
                "solver must be a natvi.linalg solver (Cholesky(), CG(...), Woodbury(), "
                f"OU(...)) with .solve(A, b, x0); got {type(solver).__name__}."
            )
        if curvature not in ("ggn", "empirical"):
            raise ValueError(f"curvature must be 'ggn' or 'empirical', got {curvature!r}.")
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}.")
        if isinstance(solver, Woodbury) and form not in ("auto", "low_rank"):
            raise ValueError("Woodbury needs form='low_rank' (or 'auto'): it solves λ I + U Uᵀ.")
        if warm_start not in WARM_STARTS:
            raise ValueError(f"warm_start must be one of {WARM_STARTS}, got {warm_start!r}.")
        if not (isinstance(delay, int | float) and math.isfinite(delay) and delay >= 0):
            raise ValueError(f"delay (t_d, in τ) must be a float ≥ 0, got {delay!r}.")
        if delay > 0 and not isinstance(solver, OU):
            raise ValueError("delay models the analog device; it needs solver=natvi.linalg.OU.")
        self.model, self.solver, self.curvature = model, solver, curvature
        self.damping = float(damping)
        self.form = ("low_rank" if isinstance(solver, Woodbury | OU | Cholesky) else
                     "matrix_free") if form == "auto" else form
        self.warm_start, self.delay = warm_start, float(delay)
        self.params = flat_params(model)[1]
        self.state: dict = defaultdict(dict) if state is None else state

    # ------------------------------------------------------------------ the public face
    def apply(self, inputs: Tensor, targets: Tensor, damping: float | None = None) -> dict:
        """Replace every parameter's ``.grad`` by its block of ``ñ = (λ I + G)⁻¹ g`` with ``G``
        on the batch ``(inputs, targets)``; returns the solver's diagnostics (``iterations``,
        ``residual``, ``converged``, ``solve_seconds``, ``analog_time``, ``device_seconds``)."""
        missing = [i for i, p in enumerate(self.params) if p.grad is None]
        if missing:
            raise ValueError(
                f"parameters {missing} have no .grad; call loss.backward() before apply() (or "
                "freeze them with requires_grad=False before building the preconditioner)."
            )
        curv = self.curvature_on(inputs, targets)
        g = torch.cat([p.grad.reshape(-1) for p in self.params]).to(curv.theta.dtype)
        return self.solve(curv, g, self.damping if damping is None else damping)[0]

    def curvature_on(self, inputs: Tensor, targets: Tensor) -> Curvature:
        """The curvature of the loss at the current parameters on one batch."""
        return Curvature(self.model, inputs, targets, self.loss, kind=self.curvature)

    def solve(self, curv: Curvature, g: Tensor, damping: float) -> tuple[dict, Tensor]:
        """Write ``ñ = (λ I + G)⁻¹ g`` into ``.grad`` (and the state); returns
        ``(diagnostics, ñ)``."""
        _positive("damping", damping)
        A = self._system(curv, damping)
        record: dict = {}
        res = self.solver.solve(A, g, self._warm_start(g, record))
        first = self.state[self.params[0]]
        first["step"] = first.get("step", 0) + 1
        for p, n in zip(self.params, self._split(res.x), strict=True):
            self.state[p]["natgrad"] = n.detach().clone()
            p.grad = n.detach().clone().to(p.dtype)
        if self.delay > 0:
            self._run_delay(A, g, res.x)
        record.update(
            iterations=res.iterations, residual=float(res.residual.max()),
            converged=res.converged, solve_seconds=res.digital_seconds,
            analog_time=res.analog_time, device_seconds=res.device_seconds,
        )
        return record, res.x

    def state_dict(self) -> dict:
        """The per-parameter state by parameter index (loads with ``weights_only=True``)."""
        return {"state": {i: dict(self.state[p]) for i, p in enumerate(self.params)
                          if p in self.state}}

    def load_state_dict(self, state_dict: dict) -> None:
        for i, s in state_dict["state"].items():
            self.state[self.params[int(i)]] = dict(s)

    # ------------------------------------------------------------------ pieces
    def _split(self, flat: Tensor) -> list[Tensor]:
        sizes = [p.numel() for p in self.params]
        return [c.view_as(p) for c, p in zip(torch.split(flat, sizes), self.params, strict=True)]

    def _system(self, curv: Curvature, lam: float) -> LinearOperator | Tensor:
        if self.form == "matrix_free":
            return curv.operator(lam)
        if self.form == "low_rank":
            return curv.low_rank(lam)
        return curv.damped_dense(lam)

    def _warm_start(self, g: Tensor, record: dict) -> Tensor | None:
        if self.warm_start == "zero":
            return None
        first = self.state[self.params[0]]
        if self.warm_start == "gradient" or "natgrad" not in first:
            x0 = g
        else:
            x0 = torch.cat([self.state[p]["natgrad"].reshape(-1) for p in self.params])
        if self.delay > 0 and "delayed" in first:
            x0 = torch.cat([self.state[p]["delayed"].reshape(-1) for p in self.params])
            record.update(first["delay_record"])
        return x0

    def _run_delay(self, A: LinearOperator | Tensor, g: Tensor, natgrad: Tensor) -> None:
        """The device during the next step's digital work: the system just solved, run for
        ``t_d`` from ``ñ``; its final state warm-starts the next solve."""
        ou = self.solver
        first = self.state[self.params[0]]
        seed = None if ou.seed is None else ou.seed + first["step"] + 1
        steps = max(1, round(self.delay / ou.dt))
        stale = ou.replace(num_samples=steps, burnin=0, seed=seed).solve(A, g, natgrad)
        for p, x in zip(self.params, self._split(stale.final), strict=True):
            self.state[p]["delayed"] = x.clone()
        first["delay_record"] = {
            "delay_time": stale.analog_time, "delay_device_seconds": stale.device_seconds
        }


def _positive(name: str, value: Any) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive float, got {value!r}.")

