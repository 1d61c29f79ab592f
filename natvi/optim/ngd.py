"""``NGD``: natural-gradient descent for any torch model, with any ``natvi.linalg`` solver.

With the OU solver this is Thermodynamic NGD (TNGD, Donatella et al. 2024, arXiv 2405.13817).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from natvi.fisher import LOSSES, Curvature, flat_params
from natvi.linalg import CG, OU, Cholesky, LinearOperator, Woodbury
from natvi.optim.schedules import check_real

__all__ = ["NGD"]

FORMS = ("auto", "matrix_free", "low_rank", "dense")
WARM_STARTS = ("previous", "gradient", "zero")


class NGD(Optimizer):
    r"""Natural-gradient descent (GGN / Fisher preconditioning) of a torch model.

    Step ``k`` on a batch ``(x, y)`` with loss ``L = (1/B) Σ_n ℓ(f(θ; x_n), y_n)``::

        g = ∇_θ L(θ_k)                       A = λ_k I + G(θ_k)   (GGN, or empirical Fisher)
        ñ ≈ A⁻¹ g = solver.solve(A, g, x0).x
        θ_{k+1} = θ_k − lr · ñ               (adam=True: θ_{k+1} = θ_k − lr · m̂ / (√v̂ + ε),
                                              Adam's moments of ñ with ``betas``)

    ``G`` is never formed unless the solver needs it: CG gets matrix-free products
    (``torch.func`` JVP/VJP), Woodbury and OU get ``λ I + U Uᵀ`` (:class:`LowRankPlusDiag`,
    ``U [P, B d]``), Cholesky its dense form. See :mod:`natvi.fisher` for the losses.

    **Thermodynamic NGD.** With ``solver=natvi.linalg.OU(dt, num_samples, noise=κ0, ...)`` the
    system is solved by simulating ``dx = −(A x − g) dt + √(2 κ0) dW`` for analog time
    ``t = dt (burnin + num_samples)`` (device units τ) from the warm start ``x0`` (the previous
    natural gradient by default) and ``ñ`` is the time average. As ``t → ∞`` the step is exact
    NGD's; as ``t → 0`` with ``warm_start="gradient"`` it is SGD's. ``delay = t_d > 0`` models
    a device that, while the digital side computes ``g_k, G_k``, keeps running the *previous*
    system ``(A_{k−1}, g_{k−1})`` for ``t_d`` from ``ñ_{k−1}``; that state warm-starts step k.
    TNGD-Adam is ``adam=True`` with ``betas=(0, 0)``.

    **API choice.** The curvature needs the model as a function of its parameters and the
    batch, not just a loss value, so ``step`` takes the batch: ``loss = opt.step(x, y)``
    replaces ``zero_grad(); loss.backward(); step()`` (no ``.grad`` is read or written). The
    returned loss is the one before the step.

    Args:
        model: the ``nn.Module``; all its trainable parameters form the one parameter group
            (the GGN couples them, so per-group hyperparameters are not offered).
        loss: ``"cross_entropy"`` (logits ``[B, C]``, class indices ``[B]``), ``"mse"``
            (``½‖f − y‖²`` per example) or ``"bernoulli"`` (logits, 0/1 targets).
        lr: step size (> 0).
        damping: ``λ > 0``, the initial value when adaptive.
        solver: a ``natvi.linalg`` solver; default ``CG(tol=1e-6, max_iter=100)``.
        curvature: ``"ggn"`` or ``"empirical"`` (empirical Fisher).
        form: how ``A`` reaches the solver: ``"auto"`` (see above), ``"matrix_free"``,
            ``"low_rank"`` or ``"dense"``.
        adaptive_damping: Levenberg–Marquardt rule (Martens 2010): with
            ``ρ = (L(θ + δ) − L(θ)) / (gᵀδ + ½ δᵀ G δ)``, ``λ ← λ / damping_factor`` if
            ``ρ > 3/4`` and ``λ ← λ · damping_factor`` if ``ρ < 1/4``, clipped to
            ``damping_bounds``. Costs one extra forward pass per step.
        damping_factor, damping_bounds: of the rule above (factor > 1; ``0 < lo ≤ hi``).
        warm_start: ``x0`` of iterative solvers: ``"previous"`` (the last ñ; the gradient at
            the first step), ``"gradient"`` or ``"zero"``.
        delay: ``t_d ≥ 0`` in τ (OU solver only).
        adam, betas, eps: feed ñ to Adam (``betas=(0, 0)``: TNGD-Adam).

    Every step appends a dict to :attr:`records` (``loss``, ``damping``, ``iterations``,
    ``residual``, ``converged``, ``solve_seconds`` (digital), ``analog_time``,
    ``device_seconds`` (modelled, OU only), ``step_seconds``, ``rho``); :attr:`last` is the
    latest. ``state_dict`` round-trips the step count, ñ, Adam's moments, λ and the delayed
    device state (so a resumed run with ``delay > 0`` continues the same trajectory).

    Example:
        >>> opt = NGD(model, loss="cross_entropy", lr=1.0, damping=1e-2,
        ...           solver=natvi.linalg.OU(dt=0.25, num_samples=80, noise=1e-4))
        >>> for x, y in batches:
        ...     loss = opt.step(x, y)
        >>> opt.last["device_seconds"]
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str = "cross_entropy",
        lr: float = 1.0,
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
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"model must be an nn.Module (NGD needs the model to form curvature products), "
                f"got {type(model).__name__}; pass the model itself, not model.parameters()."
            )
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
        _positive("lr", check_real("lr", lr))
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
        if not damping_factor > 1:
            raise ValueError(f"damping_factor must be > 1, got {damping_factor!r}.")
        lo, hi = damping_bounds
        if not 0 < lo <= hi:
            raise ValueError(f"damping_bounds must satisfy 0 < lo ≤ hi, got {damping_bounds!r}.")
        if warm_start not in WARM_STARTS:
            raise ValueError(f"warm_start must be one of {WARM_STARTS}, got {warm_start!r}.")
        if not (isinstance(delay, int | float) and math.isfinite(delay) and delay >= 0):
            raise ValueError(f"delay (t_d, in τ) must be a float ≥ 0, got {delay!r}.")
        if delay > 0 and not isinstance(solver, OU):
            raise ValueError("delay models the analog device; it needs solver=natvi.linalg.OU.")
        if not all(0 <= b < 1 for b in betas) or len(betas) != 2:
            raise ValueError(f"betas must be two floats in [0, 1), got {betas!r}.")
        _positive("eps", eps)
        self.model = model
        self.loss = loss
        self.solver = solver
        self.curvature = curvature
        self.form = _auto_form(solver) if form == "auto" else form
        self.adaptive_damping = adaptive_damping
        self.damping_factor = float(damping_factor)
        self.damping_bounds = (float(lo), float(hi))
        self.warm_start = warm_start
        self.delay = float(delay)
        self.adam = adam
        self.records: list[dict] = []
        _, params = flat_params(model)
        defaults = {"lr": check_real("lr", lr), "damping": float(damping), "betas": tuple(betas), "eps": eps}
        super().__init__([{"params": params}], defaults)

    @property
    def last(self) -> dict:
        """The record of the latest step."""
        if not self.records:
            raise ValueError("no step has been taken yet; call opt.step(inputs, targets) first.")
        return self.records[-1]

    def step(self, inputs: Tensor, targets: Tensor) -> Tensor:  # type: ignore[override]
        """One natural-gradient step on the batch ``(inputs [B, ...], targets)``; returns the
        loss before the step (a detached scalar)."""
        if callable(inputs):
            raise ValueError(
                "NGD.step takes the batch, opt.step(inputs, targets), not a closure: the "
                "curvature needs the model's outputs as a function of its parameters."
            )
        start = time.perf_counter()
        group = self.param_groups[0]
        params = group["params"]
        lam = group["damping"]
        curv = Curvature(self.model, inputs, targets, self.loss, kind=self.curvature)
        A = self._system(curv, lam)
        record: dict = {
            "step": self._step_count() + 1, "loss": float(curv.loss), "damping": lam, "rho": None
        }
        x0 = self._warm_start(params, curv.grad, record)
        res = self.solver.solve(A, curv.grad, x0)
        natgrad = res.x
        delta = self._update(params, natgrad, group)
        if self.adaptive_damping:
            record.update(self._adapt_damping(curv, delta, group))
        theta = curv.theta + delta
        with torch.no_grad():
            for p, chunk in zip(params, torch.split(theta, [p.numel() for p in params]),
                                strict=True):
                p.copy_(chunk.view_as(p))
        if self.delay > 0:
            self._run_delay(params, A, curv.grad, natgrad)
        record.update(
            iterations=res.iterations,
            residual=float(res.residual.max()),
            converged=res.converged,
            solve_seconds=res.digital_seconds,
            analog_time=res.analog_time,
            device_seconds=res.device_seconds,
            step_seconds=time.perf_counter() - start,
        )
        self.records.append(record)
        return curv.loss.detach()

    # ------------------------------------------------------------------ pieces of a step
    def _step_count(self) -> int:
        p = self.param_groups[0]["params"][0]
        return int(self.state[p].get("step", 0))

    def _system(self, curv: Curvature, lam: float) -> LinearOperator | Tensor:
        if self.form == "matrix_free":
            return curv.operator(lam)
        if self.form == "low_rank":
            return curv.low_rank(lam)
        return curv.damped_dense(lam)

    def _warm_start(self, params: list[Tensor], grad: Tensor, record: dict) -> Tensor | None:
        if self.warm_start == "zero":
            return None
        state = self.state[params[0]]
        if self.warm_start == "gradient" or "natgrad" not in state:
            x0 = grad
        else:
            x0 = torch.cat([self.state[p]["natgrad"].reshape(-1) for p in params])
        if self.delay > 0 and "delayed" in state:
            x0 = torch.cat([self.state[p]["delayed"].reshape(-1) for p in params])
            record.update(state["delay_record"])
        return x0

    def _run_delay(
        self, params: list[Tensor], A: LinearOperator | Tensor, grad: Tensor, natgrad: Tensor
    ) -> None:
        """The device during the next step's digital work: the system just solved, run for
        ``t_d`` from ``ñ``; its final state (kept in ``state``, so in ``state_dict``)
        warm-starts the next step."""
        ou = self.solver
        steps = max(1, round(self.delay / ou.dt))
        seed = None if ou.seed is None else ou.seed + self._step_count() + 1
        stale = ou.replace(num_samples=steps, burnin=0, seed=seed).solve(A, grad, natgrad)
        for p, x in zip(params, torch.split(stale.final, [p.numel() for p in params]),
                        strict=True):
            self.state[p]["delayed"] = x.view_as(p).clone()
        self.state[params[0]]["delay_record"] = {
            "delay_time": stale.analog_time, "delay_device_seconds": stale.device_seconds
        }

    def _update(self, params: list[Tensor], natgrad: Tensor, group: dict) -> Tensor:
        """Store ñ and the step count; return ``δ`` (flat) with ``θ ← θ + δ``."""
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        deltas = []
        for p, n in zip(params, torch.split(natgrad, [p.numel() for p in params]), strict=True):
            state = self.state[p]
            n = n.view_as(p).detach()
            state["step"] = state.get("step", 0) + 1
            state["natgrad"] = n.clone()
            if not self.adam:
                deltas.append(-lr * n)
                continue
            t = state["step"]
            m = state.get("exp_avg", torch.zeros_like(n)).mul(beta1).add(n, alpha=1 - beta1)
            v = state.get("exp_avg_sq", torch.zeros_like(n)).mul(beta2).addcmul(
                n, n, value=1 - beta2)
            state["exp_avg"], state["exp_avg_sq"] = m, v
            m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
            deltas.append(-lr * m_hat / (v_hat.sqrt() + eps))
        return torch.cat([d.reshape(-1) for d in deltas])

    def _adapt_damping(self, curv: Curvature, delta: Tensor, group: dict) -> dict:
        """Levenberg–Marquardt: compare the actual with the quadratic model's loss change."""
        actual = float(curv.loss_at(curv.theta + delta) - curv.loss)
        Gd = curv.factor() @ (curv.factor().mT @ delta) if self.form != "matrix_free" else (
            curv.matvec(delta))
        predicted = float(curv.grad @ delta + 0.5 * delta @ Gd)
        rho = actual / predicted if predicted < 0 else -math.inf
        lam = group["damping"]
        if rho > 0.75:
            lam /= self.damping_factor
        elif rho < 0.25:
            lam *= self.damping_factor
        lo, hi = self.damping_bounds
        group["damping"] = min(max(lam, lo), hi)
        return {"rho": rho, "loss_after": curv.loss.item() + actual}


def _auto_form(solver: Any) -> str:
    if isinstance(solver, Woodbury | OU | Cholesky):
        return "low_rank"
    return "matrix_free"


def _positive(name: str, value: Any) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive float, got {value!r}.")
