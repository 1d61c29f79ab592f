"""``NGD``: natural-gradient descent for any torch model — SGD on the preconditioned gradient.

``NGD`` is a :class:`~natvi.optim.FisherPreconditioner` (``.grad ← (λ I + G)⁻¹ .grad``) followed
by a plain SGD step with a step-size schedule, plus Levenberg–Marquardt damping. With the OU
solver this is Thermodynamic NGD (TNGD, Donatella et al. 2024, arXiv 2405.13817); TNGD-Adam is
the preconditioner followed by ``torch.optim.Adam(..., betas=(0, 0))``.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.adam import adam as adam_update

from natvi.fisher import Curvature
from natvi.optim.preconditioner import FisherPreconditioner, _positive
from natvi.optim.schedules import as_schedule, check_real, evaluate

__all__ = ["NGD"]


class NGD(Optimizer):
    r"""Natural-gradient descent (GGN / Fisher preconditioning) of a torch model.

    Step ``t`` after ``loss.backward()`` on a batch ``(x, y)`` declared with :meth:`observe`::

        g = .grad = ∇_θ L(θ_t)               A = λ_t I + G(θ_t)   (GGN, or empirical Fisher)
        ñ ≈ A⁻¹ g = solver.solve(A, g, x0).x  (written into .grad)
        θ_{t+1} = θ_t − γ_t ñ                (γ_t = lr, or lr(t) for a schedule)

    It is a ``torch.optim.Optimizer`` with the usual contract: ``step(closure=None)`` (the
    closure zeroes the gradients, evaluates the loss, calls ``backward`` and returns the loss),
    ``zero_grad``, ``state_dict`` / ``load_state_dict``. The curvature needs the model's
    outputs as a function of its parameters on the batch, so the batch is declared with
    ``opt.observe(x, y)`` before the step (as for :class:`~natvi.optim.SNGD`); the right-hand
    side is whatever ``.grad`` holds (so regularisers added to the loss are preconditioned
    too). See :class:`~natvi.optim.FisherPreconditioner` for the solvers, the warm start and
    the device delay.

    Args:
        model: the ``nn.Module``; all its trainable parameters form the one parameter group
            (the GGN couples them, so per-group hyperparameters are not offered).
        loss: ``loss(outputs, targets) -> scalar``, the batch mean of a per-example loss
            (default ``F.cross_entropy``); the names ``"cross_entropy"``, ``"mse"``,
            ``"bernoulli"`` are deprecated.
        lr: step size (> 0) or a schedule ``step -> lr`` (:mod:`natvi.optim.schedules`).
        damping: ``λ > 0``, the initial value when adaptive.
        solver, curvature, form, warm_start, delay: of the preconditioner.
        adaptive_damping: Levenberg–Marquardt rule (Martens 2010): with
            ``ρ = (L(θ + δ) − L(θ)) / (gᵀδ + ½ δᵀ G δ)``, ``λ ← λ / damping_factor`` if
            ``ρ > 3/4`` and ``λ ← λ · damping_factor`` if ``ρ < 1/4``, clipped to
            ``damping_bounds``. Costs one extra forward pass per step.
        damping_factor, damping_bounds: of the rule above (factor > 1; ``0 < lo ≤ hi``).
        adam, betas, eps: deprecated — feed ñ to torch's Adam instead
            (``torch.optim.Adam(params, lr, betas=(0, 0))`` after
            :meth:`FisherPreconditioner.apply`: TNGD-Adam).

    Every step appends a dict to :attr:`records` (``loss``, ``damping``, ``iterations``,
    ``residual``, ``converged``, ``solve_seconds`` (digital), ``analog_time``,
    ``device_seconds`` (modelled, OU only), ``step_seconds``, ``rho``); :attr:`last` is the
    latest. ``state_dict`` round-trips the step count, ñ, λ and the delayed device state (so a
    resumed run with ``delay > 0`` continues the same trajectory).

    Example:
        >>> opt = NGD(model, F.cross_entropy, lr=1.0, damping=1e-2,
        ...           solver=natvi.linalg.OU(dt=0.25, num_samples=80, noise=1e-4))
        >>> for x, y in batches:
        ...     opt.observe(x, y)
        ...     loss = opt.step(lambda: (opt.zero_grad(), l := F.cross_entropy(model(x), y),
        ...                              l.backward())[1])
        >>> opt.last["device_seconds"]
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Callable[[Tensor, Tensor], Tensor] | str | None = None,
        lr: float | Callable[[int], float] = 1.0,
        damping: float = 1e-3,
        *,
        solver: Any = None,
        curvature: str = "ggn",
        form: str = "auto",
        adaptive_damping: bool = False,
        damping_factor: float = 1.5,
        damping_bounds: tuple[float, float] = (1e-8, 1e4),
        warm_start: str = "previous",
        delay: float = 0.0,
        adam: bool = False,
        betas: tuple[float, float] = (0.0, 0.0),
        eps: float = 1e-8,
    ) -> None:
        self.schedule = as_schedule(lr) if callable(lr) else None
        if self.schedule is None:
            lr = check_real("lr", lr)
            _positive("lr", lr)
        if not damping_factor > 1:
            raise ValueError(f"damping_factor must be > 1, got {damping_factor!r}.")
        lo, hi = damping_bounds
        if not 0 < lo <= hi:
            raise ValueError(f"damping_bounds must satisfy 0 < lo ≤ hi, got {damping_bounds!r}.")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two floats in [0, 1), got {betas!r}.")
        _positive("eps", eps)
        if adam:
            warnings.warn(
                "NGD(adam=True) is deprecated; use FisherPreconditioner(...).apply(x, y) and "
                "then torch.optim.Adam(model.parameters(), lr, betas=(0, 0)) (TNGD-Adam). It "
                "will be removed in the next release.", DeprecationWarning, stacklevel=2,
            )
        self.preconditioner = FisherPreconditioner(
            model, loss, damping, solver=solver, curvature=curvature, form=form,
            warm_start=warm_start, delay=delay, state=None,
        )
        self.model = model
        self.adaptive_damping = adaptive_damping
        self.damping_factor = float(damping_factor)
        self.damping_bounds = (float(lo), float(hi))
        self.adam = bool(adam)
        self.records: list[dict] = []
        self._batch: tuple[Tensor, Tensor] | None = None
        first_lr = 0.0 if self.schedule is not None else float(lr)
        defaults = {"lr": first_lr, "damping": float(damping), "betas": tuple(betas), "eps": eps}
        super().__init__([{"params": self.preconditioner.params}], defaults)
        self.preconditioner.state = self.state  # ñ and the device state go into state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(copy.deepcopy(state_dict))  # no tensor shared with the source
        self.preconditioner.state = self.state  # torch replaces the state dict on load

    # the preconditioner's settings, readable as before
    solver = property(lambda self: self.preconditioner.solver)
    form = property(lambda self: self.preconditioner.form)
    delay = property(lambda self: self.preconditioner.delay)
    warm_start = property(lambda self: self.preconditioner.warm_start)

    @property
    def last(self) -> dict:
        """The record of the latest step."""
        if not self.records:
            raise ValueError("no step has been taken yet; call opt.step(closure) first.")
        return self.records[-1]

    def observe(self, inputs: Tensor, targets: Tensor) -> None:
        """The batch ``(inputs [B, ...], targets)`` whose curvature preconditions the next
        steps (until the next call)."""
        self._batch = (inputs, targets)

    def step(self, closure: Callable[[], Tensor] | None = None, *batch: Any) -> Tensor | None:
        """One natural-gradient step; returns the closure's loss (``None`` without a closure).

        The deprecated ``opt.step(inputs, targets)`` observes the batch, computes the loss and
        its gradient itself and returns the loss before the step.
        """
        if batch and callable(closure) or len(batch) > 1:
            raise ValueError(
                "NGD.step takes a closure, opt.step(closure), after opt.observe(inputs, "
                "targets) (or the deprecated opt.step(inputs, targets)); got "
                f"{1 + len(batch)} arguments."
            )
        if batch:
            return self._step_on_batch(closure, batch[0])
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._batch is None:
            raise ValueError(
                "NGD needs the batch for its curvature: call opt.observe(inputs, targets) "
                "before opt.step(closure)."
            )
        params = self.param_groups[0]["params"]
        if any(p.grad is None for p in params):
            return loss
        g = torch.cat([p.grad.reshape(-1) for p in params])
        self._take_step(self.preconditioner.curvature_on(*self._batch), g)
        return loss

    # ------------------------------------------------------------------ pieces of a step
    def _step_on_batch(self, inputs: Tensor, targets: Tensor) -> Tensor:
        warnings.warn(
            "NGD.step(inputs, targets) is deprecated; call opt.observe(inputs, targets) and "
            "opt.step(closure) (the torch.optim contract). It will be removed in the next "
            "release.", DeprecationWarning, stacklevel=3,
        )
        self.observe(inputs, targets)
        curv = self.preconditioner.curvature_on(inputs, targets)
        self._take_step(curv, curv.grad)
        return curv.loss

    @torch.no_grad()
    def _take_step(self, curv: Curvature, g: Tensor) -> None:
        start = time.perf_counter()
        group = self.param_groups[0]
        params = group["params"]
        t = self.state[params[0]].get("step", 0)
        if self.schedule is not None:
            group["lr"] = evaluate(self.schedule, t)
        lam = group["damping"]
        record: dict = {"step": t + 1, "loss": float(curv.loss), "damping": lam, "rho": None}
        diagnostics, _ = self.preconditioner.solve(curv, g.to(curv.theta.dtype), lam)
        if self.adam:
            self._adam(params, group)
        else:
            for p in params:
                p.add_(p.grad, alpha=-group["lr"])
        if self.adaptive_damping:
            theta = torch.cat([p.detach().reshape(-1) for p in params]).to(curv.theta.dtype)
            record.update(self._adapt_damping(curv, g, theta - curv.theta, group))
        record.update(diagnostics, step_seconds=time.perf_counter() - start)
        self.records.append(record)

    def _adam(self, params: list[Tensor], group: dict) -> None:
        """Deprecated ``adam=True``: torch's own Adam update fed ñ (the state lives here)."""
        states = [self.state[p] for p in params]
        for p, s in zip(params, states, strict=True):
            if "exp_avg" not in s:
                s["exp_avg"], s["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                s["adam_step"] = torch.zeros((), dtype=torch.float32)
        beta1, beta2 = group["betas"]
        adam_update(
            params, [p.grad for p in params], [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states], [], [s["adam_step"] for s in states],
            amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=0.0,
            eps=group["eps"], maximize=False,
        )

    def _adapt_damping(self, curv: Curvature, g: Tensor, delta: Tensor, group: dict) -> dict:
        """Levenberg–Marquardt: compare the actual with the quadratic model's loss change."""
        actual = float(curv.loss_at(curv.theta + delta) - curv.loss)
        if self.preconditioner.form == "matrix_free":
            Gd = curv.matvec(delta)
        else:
            Gd = curv.factor() @ (curv.factor().mT @ delta)
        predicted = float(g @ delta + 0.5 * delta @ Gd)
        rho = actual / predicted if predicted < 0 else -math.inf
        lam = group["damping"]
        if rho > 0.75:
            lam /= self.damping_factor
        elif rho < 0.25:
            lam *= self.damping_factor
        lo, hi = self.damping_bounds
        group["damping"] = min(max(lam, lo), hi)
        return {"rho": rho, "loss_after": curv.loss.item() + actual}

