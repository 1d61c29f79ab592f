"""``AlternatingLBFGS``: L-BFGS for one block of parameters while another block moves between
its steps — the hyperparameters of a variational GP while natural steps move q.

:func:`natvi.fit` alternates a natural step on q with a step on the hyperparameters θ. With q
kept near its optimum q*(θ), the hyperparameters see (nearly) the profiled objective
``F(θ) = max_q ELBO(q, θ)``, a smooth deterministic function on full-batch data — the setting
where a quasi-Newton method beats Adam by a wide margin (measured in ``benchmarks/wallclock``).
``torch.optim.LBFGS`` does not fit that loop: its curvature pairs mix gradients taken before and
after q moved, and a direction that is not a descent direction ends its step without moving while
its memory still records one, so it can stall for good. This optimiser makes one quasi-Newton
step per :meth:`step` call, and everything it learns from comes from the closure:

1. the loss ``ℓ_k`` and gradient ``g_k`` at the current θ_k: passed in (``loss=``, with the
   gradient in ``.grad``) or from ``closure()``;
2. the two-loop recursion over the last ``history_size`` pairs gives ``d = −H g_k`` (scaled by
   ``sᵀy / yᵀy`` of the newest pair; with no pairs, ``d = −g_k`` scaled so that its largest
   entry is ``first_step``); a ``d`` that is not a descent direction clears the memory;
3. backtracking from ``t = 1``: ``closure()`` at ``θ_k + t d`` until
   ``ℓ(θ_k + t d) ≤ ℓ_k + c₁ t g_kᵀd`` (Armijo), halving ``t`` up to ``max_backtracks`` times;
4. the accepted pair ``s = t d``, ``y = g(θ_k + t d) − g_k`` joins the memory when ``sᵀy > 0``.
   If no step is accepted, θ returns to θ_k *bit for bit*, the memory is cleared, the next step
   starts from a ten times shorter ``first_step`` and ``closure()`` is called once more at θ_k.

The closure may move the other block before it evaluates: ``natvi.fit`` resets q to where it
was when the step began and takes one natural step on q at the trial θ, so ``ℓ`` and ``g`` are
those of the profiled objective (at a frozen q the whitened ELBO is far more curved in θ, and
the search would crawl). The loss at the accepted point is then below ``ℓ_k``. When the
predicted decrease ``−g_kᵀd`` is below what the loss resolves (``64 ε |ℓ_k|``), no search is
tried: θ stays and the closure is called once. After :meth:`step` every ``.grad`` the closure
wrote is the gradient at the point left, and :attr:`last_loss` is its loss — so the caller's
next iteration can use them instead of evaluating the model again (``natvi.fit`` does).

Use it on full-batch objectives only: minibatch noise defeats the line search and the pairs.

Args:
    params: the parameters θ (an iterable of tensors).
    history_size: number of curvature pairs kept (default 10).
    first_step: largest entry of the first step, and after every memory reset (default 0.1).
    c1: Armijo's sufficient-decrease constant (default 1e-4).
    max_backtracks: halvings of ``t`` before the step is given up (default 20).

Example:
    >>> opt = AlternatingLBFGS(model.hyperparameters())
    >>> def closure():
    ...     model.zero_grad()
    ...     loss = -model.elbo(X, y)
    ...     loss.backward()
    ...     return loss
    >>> loss = opt.step(closure)          # one quasi-Newton step on θ at the current q
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

__all__ = ["AlternatingLBFGS"]


class AlternatingLBFGS(torch.optim.Optimizer):
    """L-BFGS with an Armijo line search, one step per call, curvature pairs at fixed other
    blocks; see the module docstring for the rule."""

    def __init__(
        self,
        params: Iterable[Tensor],
        history_size: int = 10,
        first_step: float = 0.1,
        c1: float = 1e-4,
        max_backtracks: int = 20,
    ) -> None:
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 1:
            raise ValueError(f"history_size must be an integer >= 1, got {history_size!r}.")
        if isinstance(max_backtracks, bool) or not isinstance(max_backtracks, int) or (
            max_backtracks < 0
        ):
            raise ValueError(f"max_backtracks must be an integer >= 0, got {max_backtracks!r}.")
        for name, value, hi in (("first_step", first_step, math.inf), ("c1", c1, 1.0)):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and 0 < value < hi):
                raise ValueError(f"{name} must be a number in (0, {hi}), got {value!r}.")
        defaults = {"history_size": history_size, "first_step": float(first_step),
                    "c1": float(c1), "max_backtracks": max_backtracks}
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("AlternatingLBFGS takes one parameter group.")
        self._params = self.param_groups[0]["params"]
        if not self._params:
            raise ValueError("AlternatingLBFGS got no parameters.")
        self.last_loss: float = math.nan
        """Loss at the point the last :meth:`step` left (``.grad`` holds its gradient)."""
        self.last_t: float = math.nan
        """Step length the last :meth:`step` accepted (0: no step was accepted)."""

    # ------------------------------------------------------------------ flat views
    def _flat_grad(self) -> Tensor:
        return torch.cat([
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
            for p in self._params
        ])

    def _get(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self._params])

    @torch.no_grad()
    def _set(self, x: Tensor) -> None:
        offset = 0
        for p in self._params:
            n = p.numel()
            p.copy_(x[offset : offset + n].view_as(p))
            offset += n

    @property
    def _memory(self) -> dict:
        state = self.state[self._params[0]]
        if "s" not in state:
            state.update(s=[], y=[], first_step=self.param_groups[0]["first_step"])
        return state

    def reset(self) -> None:
        """Forget the curvature pairs (e.g. after the objective changed abruptly)."""
        self._memory["s"].clear()
        self._memory["y"].clear()

    def _direction(self, g: Tensor) -> Tensor:
        mem = self._memory
        q, alphas = g.clone(), []
        for s, y in zip(reversed(mem["s"]), reversed(mem["y"])):
            rho = 1.0 / y.dot(s)
            a = rho * s.dot(q)
            q.sub_(a * y)
            alphas.append((rho, a, s, y))
        if mem["s"]:
            s, y = mem["s"][-1], mem["y"][-1]
            q.mul_(s.dot(y) / y.dot(y))
        else:
            q.mul_(mem["first_step"] / g.abs().max().clamp_min(torch.finfo(g.dtype).tiny))
        for rho, a, s, y in reversed(alphas):
            q.add_((a - rho * y.dot(q)) * s)
        return q.neg_()

    def step(  # type: ignore[override]
        self, closure: Callable[[], Tensor | float], loss: Tensor | float | None = None
    ) -> float:
        """One quasi-Newton step on the parameters.

        Args:
            closure: zeroes the gradients, evaluates the loss at the current parameters (after
                re-optimising the other block there, if it does that), calls ``backward()``
                and returns the loss.
            loss: the loss at the current parameters whose gradient already is in ``.grad``
                (e.g. the :attr:`last_loss` of the previous step); ``None``: ``closure()``
                is called first to get them.

        Returns the loss at the point left (also :attr:`last_loss`)."""
        if closure is None:
            raise ValueError("AlternatingLBFGS.step needs a closure that evaluates the loss and "
                             "its gradient (zero_grad, loss, backward, return loss).")
        group, mem = self.param_groups[0], self._memory
        loss0 = float(closure() if loss is None else loss)
        g0, x0 = self._flat_grad(), self._get()
        if not math.isfinite(loss0) or not bool(torch.isfinite(g0).all()):
            self.last_loss, self.last_t = loss0, 0.0
            return loss0
        d = self._direction(g0)
        slope = float(g0.dot(d))
        if not slope < 0:
            self.reset()
            d = self._direction(g0)
            slope = float(g0.dot(d))
        if slope == 0.0:  # a zero gradient: nothing to do, .grad is current
            self.last_loss, self.last_t = loss0, 0.0
            return loss0
        if -slope <= 64 * torch.finfo(g0.dtype).eps * max(abs(loss0), 1.0):
            # The predicted decrease is below what the loss can resolve in this precision: a
            # line search could only fail (at 2 evaluations per try). θ stays; one evaluation
            # at θ (the other block still moves, if the closure moves it).
            self.last_loss, self.last_t = float(closure()), 0.0
            return self.last_loss
        t = 1.0
        for _ in range(group["max_backtracks"] + 1):
            self._set(x0 + t * d)
            loss = float(closure())
            if math.isfinite(loss) and loss <= loss0 + group["c1"] * t * slope:
                g1 = self._flat_grad()
                s, y = t * d, g1 - g0
                if bool(torch.isfinite(g1).all()) and float(s.dot(y)) > 0:
                    mem["s"].append(s)
                    mem["y"].append(y)
                    if len(mem["s"]) > group["history_size"]:
                        mem["s"].pop(0)
                        mem["y"].pop(0)
                mem["first_step"] = group["first_step"]
                self.last_loss, self.last_t = loss, t
                return loss
            t *= 0.5
        # No acceptable step: back to x0 exactly, shorter first steps from a clean memory, and
        # the gradient at x0 in .grad again.
        self._set(x0)
        self.reset()
        mem["first_step"] *= 0.1
        self.last_loss, self.last_t = float(closure()), 0.0
        return self.last_loss
