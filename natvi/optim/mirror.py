"""``MirrorDescent``: natural-gradient descent on exponential-family natural parameters.

For a family with log-partition ``A``, natural ``θ`` and mean ``μ = ∇A(θ)``, the natural
gradient of a loss ``L`` in ``θ`` is the ordinary gradient in ``μ`` (``F(θ)⁻¹ ∇_θ L = ∇_μ L``),
so the step

    θ_{t+1} = θ_t − γ ∇_μ L(μ_t)

costs one closed-form ``O(#params)`` map per step (``family.natural_gradient``), no solve.

**Mirror-descent view** (Raskutti & Mukherjee 2015). The update above is *linear in θ*, the
dual coordinates of ``μ`` under the convex conjugate ``A*`` (``∇A*(μ) = θ``). It is therefore
exactly mirror descent over the mean parameters with mirror map ``A*``:

    μ_{t+1} = argmin_μ ⟨∇_μ L(μ_t), μ⟩ + (1/γ) D_{A*}(μ, μ_t),

whose optimality condition is ``∇A*(μ_{t+1}) = ∇A*(μ_t) − γ ∇_μ L``, i.e. the θ update. Written
with ``A`` itself, ``D_{A*}(μ, μ_t) = D_A(θ_t, θ)`` (the Bregman divergence of the
log-partition with its arguments swapped, ``= KL(p_θ ‖ p_{θ_t})``), so equivalently
``θ_{t+1} = argmin_θ ⟨∇_μ L(μ_t), ∇A(θ)⟩ + (1/γ) D_A(θ_t, θ)``. (The mirror descent over θ with
``D_A(θ, θ_t)`` is the other natural-gradient step, linear in ``μ``:
``μ_{t+1} = μ_t − γ ∇_θ L``.) For the negative log-likelihood ``L = A(θ) − ⟨θ, T̄⟩`` the
Hessian is ``F`` itself, so ``γ = 1`` is Newton's method and converges quadratically to the
maximum-likelihood estimate ``μ = T̄``.

A step is atomic (:func:`natvi.optim.engine.atomic_step`, the engine of every natvi
natural-gradient optimiser): if the new θ leaves the family's domain
(:meth:`~natvi.expfam.ExponentialFamily.in_domain`), the step size is halved for this step and
retried, at most ``max_backoff`` times; the parameters are never left invalid. Each step leaves
one :class:`~natvi.optim.engine.StepRecord` per group in :attr:`MirrorDescent.step_records`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from natvi.expfam.base import ExponentialFamily
from natvi.optim.engine import Block, StepRecord, atomic_step, warn
from natvi.optim.schedules import as_schedule, evaluate

__all__ = ["MirrorDescent"]

LR = float | Callable[[int], float]


class MirrorDescent(torch.optim.Optimizer):
    """Natural-gradient (= mirror) descent on an exponential family's natural parameters.

    Each param group holds the natural parameters of one family, in the order of the family's
    parameter tuple (one tensor for Bernoulli/Categorical/Poisson/Exponential; ``(θ1, θ2)``
    for Gamma and the Gaussians; ``(θ_y, θ_x)`` for NaiveBayes); leading batch dimensions are
    allowed. The gradients in ``.grad`` are ``∇_θ L``; the step is
    ``θ ← θ − γ_t family.natural_gradient(θ, ∇_θ L)`` (module docstring).

    Args:
        params: tensors or param groups (dicts with ``params`` and optionally ``family``,
            ``lr``, ``max_backoff``).
        family: the :class:`~natvi.expfam.ExponentialFamily` of the groups.
        lr: step size ``γ > 0``, or a callable ``t -> γ_t`` of the 0-based step count.
        max_backoff: how many times a step that leaves the domain is halved and retried.

    Example:
        >>> from natvi.expfam import Gamma
        >>> fam = Gamma()
        >>> x = torch.distributions.Gamma(3.0, 2.0).sample((1000,)).double()
        >>> theta = [torch.nn.Parameter(t) for t in fam.from_shape_rate(
        ...     torch.tensor(1.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))]
        >>> opt = MirrorDescent(theta, family=fam, lr=1.0)
        >>> def closure():
        ...     opt.zero_grad()
        ...     nll = fam.log_partition(tuple(theta)) - theta[0] * x.log().mean() - theta[1] * x.mean()
        ...     nll.backward()
        ...     return nll
        >>> for _ in range(10):
        ...     opt.step(closure)                       # Newton on the NLL: MLE in a few steps
    """

    def __init__(
        self,
        params: Iterable,
        family: ExponentialFamily | None = None,
        lr: LR = 1.0,
        max_backoff: int = 10,
    ) -> None:
        as_schedule(lr)
        if int(max_backoff) < 0:
            raise ValueError(f"max_backoff must be ≥ 0, got {max_backoff!r}.")
        self._default_family = family
        self.families: list[ExponentialFamily] = []
        self.step_records: list[StepRecord] = []
        self.last_records: list[StepRecord] = []
        super().__init__(params, dict(lr=lr, max_backoff=int(max_backoff)))

    def add_param_group(self, param_group: dict) -> None:
        """Add a group; its ``family`` (or the default) is kept beside the group, not in it,
        so that ``state_dict()`` holds only tensors and numbers (``torch.load`` safe)."""
        family = param_group.pop("family", self._default_family)
        if not isinstance(family, ExponentialFamily):
            raise ValueError(
                "MirrorDescent: every param group needs family=<an ExponentialFamily> (e.g. "
                f"natvi.expfam.Gamma()); got {family!r}."
            )
        as_schedule(param_group.get("lr", self.defaults["lr"]))
        super().add_param_group(param_group)
        self.families.append(family)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One natural-gradient step per param group; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.last_records = []
        for index, (group, fam) in enumerate(zip(self.param_groups, self.families)):
            params = group["params"]
            if any(p.grad is None for p in params):
                continue
            state = self.state[params[0]]
            t = state.get("step", 0)
            lr = evaluate(as_schedule(group["lr"]), t)
            theta = [p.detach().clone() for p in params]
            nat = _unpack(fam.natural_gradient(_pack(theta), _pack([p.grad for p in params])))

            def propose(gamma: float, theta=theta, nat=nat) -> list[torch.Tensor]:
                return [x - gamma * n for x, n in zip(theta, nat)]

            def valid(candidate, fam=fam) -> bool:
                return fam.in_domain(_pack(list(candidate)))

            block = Block(params, propose, valid, lr, t, index)
            (record,), _ = atomic_step([block], max_tries=group["max_backoff"])
            if record.kind == "skipped":
                raise ValueError(
                    f"MirrorDescent: every step size from lr={lr:g} down to "
                    f"{lr * 0.5 ** group['max_backoff']:g} leaves the {type(fam).__name__} "
                    "family's domain, so the parameters were left unchanged. Use a smaller lr, "
                    "raise max_backoff, or check the loss's gradient for NaN."
                )
            state["step"] = t + 1
            self.last_records.append(record)
        self.step_records.extend(self.last_records)
        warn("MirrorDescent", self.last_records, "Kept θ in the family's domain.", stacklevel=5)
        return loss


def _pack(ts: list[torch.Tensor]):
    return ts[0] if len(ts) == 1 else tuple(ts)


def _unpack(x) -> list[torch.Tensor]:
    return list(x) if isinstance(x, tuple) else [x]
