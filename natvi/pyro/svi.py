"""``NaturalSVI``: Pyro's SVI with natural-gradient steps on the Gaussian guide."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.optim
import torch
from pyro import poutine
from pyro.infer.util import zero_grads
from pyro.util import get_rng_state, set_rng_state
from torch import Tensor

from natvi.natgrad import expectation_gradient
from natvi.optim.engine import Block, SafeguardWarning, StepRecord, atomic_step
from natvi.optim.schedules import Decay, as_schedule, evaluate
from natvi.pyro.guides import GaussianBlock, check_supported, find_blocks

__all__ = ["NaturalSVI", "StepReport", "default_schedule"]

_UPDATES = ("natural", "stored")
_CHECKS = ("auto", True, False)


def default_schedule(dim: int) -> Decay:
    """The default step size for a guide with ``dim`` latent dimensions (all blocks together):
    ``γ_t = γ0 / (1 + t / t0)`` with ``γ0 = min(1/2, 1/dim)`` and ``t0 = max(20, 3·dim)``.

    A Robbins–Monro schedule (``Σγ = ∞``, ``Σγ² < ∞``): stochastic natural-gradient VI with a
    constant step settles in a noise ball around the optimum (~2% above it on the regression of
    ``models/bayesian_regression.py`` with one particle); a decaying step reaches it. The first
    step is small for large guides because a one-particle estimate of ``∇_η L`` for a ``dim``-
    dimensional Gaussian has variance growing with ``dim``.
    """
    dim = max(int(dim), 1)
    return Decay(a=min(0.5, 1.0 / dim), b=1.0 / max(20, 3 * dim))


@dataclass(frozen=True)
class StepReport:
    """Deprecated (use :attr:`NaturalSVI.last_records`): what the last natural step did."""

    step: int
    lr: float
    lr_used: tuple[float, ...]
    backoffs: int
    skipped: int


class NaturalSVI:
    r"""Stochastic variational inference with natural-gradient steps on a Gaussian guide.

    Like :class:`pyro.infer.SVI`: ``step(*args, **kwargs)`` runs ``loss.loss_and_grads(model,
    guide, *args, **kwargs)`` and returns the loss. The guide's Gaussian ``q = N(m, S)`` (see
    :mod:`natvi.pyro.guides` for the supported guides) is then updated by a natural-gradient step,
    computed from the gradients Pyro's loss left on the stored (unconstrained) params ``u``:

        ∇_η L = (∂u/∂η)ᵀ ∇_u L                       (natvi.expectation_gradient, one VJP)
        update="natural":  θ ← θ − γ ∇_η L,  u ← u(θ)  (exact inverse map back to storage)
        update="stored":   u ← u − γ F_u⁻¹ ∇_u L = u − γ (∂u/∂θ) ∇_η L   (one JVP)

    where θ are q's natural parameters and η its expectation parameters. Both agree to first order
    in γ; ``"natural"`` (default) is the textbook rule — with γ = 1 and an exact ELBO gradient of
    a conjugate model it lands on the exact posterior in one step. L is the total loss Pyro
    returns (for ``Trace_ELBO`` the negative ELBO over the whole data set). All other params
    (the model's) are updated by ``optim``, an ordinary Pyro optimiser.

    **Defaults that work from Pyro's own defaults** (one particle, ``Trace_ELBO``,
    ``TraceMeanField_ELBO``, ``JitTrace_ELBO``): the step size decays (:func:`default_schedule`),
    and each step is checked on the loss — the loss at the proposal and at the current point are
    evaluated with the *same* random draw (paired), and a proposal that raises it, or gives a
    non-finite loss, is shrunk by ``backoff`` (at most ``max_backoffs`` times) and else skipped.
    A step whose gradients are not finite is skipped. Every step goes through natvi's atomic-step
    engine (:mod:`natvi.optim.engine`): q is never left invalid, each step leaves one
    :class:`~natvi.optim.engine.StepRecord` per Gaussian block in :attr:`step_records`, and
    :attr:`num_backoffs` / :attr:`num_skipped` count the interventions (warned about as they
    reach 1, 10, 100, ...).

    (The improved Bayesian learning rule's Riemannian correction was measured as the default
    and rejected: with one particle it shrinks the covariance too much — over-confident q.)

    Args:
        model: a Pyro model.
        guide: a supported Gaussian guide.
        lr: γ, a float in (0, ∞) or a callable ``step -> γ``; default :func:`default_schedule`
            of the guide's latent dimension.
        loss: an ELBO with ``loss_and_grads`` (default ``pyro.infer.Trace_ELBO()``), or a callable
            ``loss(model, guide, *args, **kwargs) -> Tensor`` that is differentiated here.
        optim: Pyro optimiser for the non-guide params; default ``pyro.optim.Adam({"lr": 1e-2})``.
        update: ``"natural"`` or ``"stored"`` (see above).
        backoff: factor in (0, 1) that shrinks γ after a rejected step.
        max_backoffs: how many times to shrink γ before skipping the step.
        check_loss: ``"auto"`` (check with an ELBO that has ``.loss``, not with a callable loss),
            ``True`` or ``False`` (check only that q stays a valid Gaussian).

    Example:
        >>> guide = pyro.infer.autoguide.AutoMultivariateNormal(model)
        >>> svi = NaturalSVI(model, guide)          # one particle, Trace_ELBO, decaying γ
        >>> for _ in range(500):
        ...     loss = svi.step(x, y)
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        lr: float | Callable[[int], float] | None = None,
        loss: object | None = None,
        optim: pyro.optim.PyroOptim | None = None,
        update: str = "natural",
        backoff: float = 0.5,
        max_backoffs: int = 20,
        check_loss: bool | str = "auto",
    ) -> None:
        check_supported(guide)
        if lr is not None:
            as_schedule(lr)
        if update not in _UPDATES:
            raise ValueError(f"update must be one of {_UPDATES}, got {update!r}.")
        if not 0.0 < backoff < 1.0:
            raise ValueError(f"backoff must lie in (0, 1) (the factor that shrinks γ), got {backoff}.")
        if int(max_backoffs) < 0:
            raise ValueError(f"max_backoffs must be a non-negative integer, got {max_backoffs}.")
        if check_loss not in _CHECKS:
            raise ValueError(f"check_loss must be 'auto', True or False, got {check_loss!r}.")
        if loss is not None and not (hasattr(loss, "loss_and_grads") or callable(loss)):
            raise ValueError(
                "loss must be a Pyro ELBO (with loss_and_grads) or a callable "
                f"loss(model, guide, *args, **kwargs) -> Tensor; got {type(loss).__name__}."
            )
        self.model = model
        self.guide = guide
        self.lr = lr
        self.loss = loss if loss is not None else pyro.infer.Trace_ELBO()
        self.optim = optim if optim is not None else pyro.optim.Adam({"lr": 1e-2})
        self.update = update
        self.backoff = float(backoff)
        self.max_backoffs = int(max_backoffs)
        self.check_loss = hasattr(self.loss, "loss") if check_loss == "auto" else check_loss
        self.num_steps = 0
        self.num_backoffs = 0
        self.num_skipped = 0
        self.step_records: list[StepRecord] = []
        self.last_records: list[StepRecord] = []

    @property
    def last_report(self) -> StepReport | None:
        """Deprecated: read :attr:`last_records` (one StepRecord per Gaussian block)."""
        warnings.warn(
            "NaturalSVI.last_report is deprecated; use NaturalSVI.last_records "
            "(natvi.optim.engine.StepRecord, one per Gaussian block).",
            DeprecationWarning,
            stacklevel=2,
        )
        if not self.last_records:
            return None
        rs = self.last_records
        return StepReport(rs[0].step, rs[0].lr, tuple(r.lr_used for r in rs),
                          sum(r.tries for r in rs if r.kind != "skipped"),
                          sum(r.kind == "skipped" for r in rs))

    def _loss_and_grads(self, *args, **kwargs) -> tuple[float, dict[str, Tensor]]:
        with poutine.trace(param_only=True) as capture:
            if hasattr(self.loss, "loss_and_grads"):
                loss = self.loss.loss_and_grads(self.model, self.guide, *args, **kwargs)
            else:
                loss_t = self.loss(self.model, self.guide, *args, **kwargs)
                loss_t.backward()
                loss = loss_t.detach()
        params = {n: s["value"].unconstrained() for n, s in capture.trace.nodes.items()}
        return float(loss), params

    def _paired_loss(self, rng: dict, args, kwargs) -> Callable[[], Tensor]:
        """The loss at the current params with the random draw that ``rng`` starts."""

        def closure() -> Tensor:
            set_rng_state(rng)
            with torch.no_grad():
                if hasattr(self.loss, "loss"):
                    value = self.loss.loss(self.model, self.guide, *args, **kwargs)
                else:
                    value = self.loss(self.model, self.guide, *args, **kwargs)
            return torch.as_tensor(float(value))

        return closure

    def _schedule(self, blocks: list[GaussianBlock], params: dict[str, Tensor]):
        if self.lr is None:
            dim = sum(params[b.names[0]].numel() for b in blocks)
            self.lr = default_schedule(dim)
        return as_schedule(self.lr)

    def step(self, *args, **kwargs) -> float:
        """One natural step on the guide's Gaussian and one ``optim`` step on the rest.

        Returns:
            The loss before the step (as :meth:`pyro.infer.SVI.step`).
        """
        rng = get_rng_state()
        loss, params = self._loss_and_grads(*args, **kwargs)
        after_draw = get_rng_state()
        blocks = find_blocks(self.guide, set(params))
        lr = evaluate(self._schedule(blocks, params), self.num_steps)
        built = [self._block(i, b, [params[n] for n in b.names], lr) for i, b in enumerate(blocks)]
        records: list[StepRecord] = []
        if any(b is None for b in built):  # non-finite gradients: skip the whole step
            records = [StepRecord(self.num_steps, i, lr, 0.0, 0, "nonfinite_gradient")
                       for i in range(len(blocks))]
        else:
            closure = before = None
            if self.check_loss:
                closure = self._paired_loss(rng, args, kwargs)
                before = closure()
            records, _ = atomic_step(built, closure=closure, before=before, monotone=True,
                                     factor=self.backoff, max_tries=self.max_backoffs)
            set_rng_state(after_draw)
        in_blocks = {n for b in blocks for n in b.names}
        others = [u for n, u in params.items() if n not in in_blocks]
        if others and all(bool(torch.isfinite(u.grad).all()) for u in others if u.grad is not None):
            self.optim(others)
        zero_grads(set(params.values()))
        self._count(records)
        self.num_steps += 1
        return loss

    def _count(self, records: list[StepRecord]) -> None:
        self.last_records = records
        self.step_records.extend(records)
        backoffs = sum(r.kind == "backoff" for r in records)
        skipped = sum(r.kind == "skipped" for r in records)
        for name, old, new in (("back-offs", self.num_backoffs, self.num_backoffs + backoffs),
                               ("skipped steps", self.num_skipped, self.num_skipped + skipped)):
            if new > old and (old == 0 or len(str(new)) > len(str(old))):
                reasons = sorted({str(r.reason) for r in records if r.kind != "ok"})
                warnings.warn(
                    f"NaturalSVI: {new} {name} so far (step {self.num_steps}: "
                    f"{', '.join(reasons)}; q left unchanged where skipped). The safeguard "
                    "kept q a valid Gaussian"
                    + (" and rejected steps that raised the paired loss estimate"
                       if self.check_loss else " but did not check the loss (check_loss=False)")
                    + "; many of them mean the step size is too large for this gradient noise: "
                    "use the default decaying lr, a smaller lr, or more particles. "
                    "Counted in num_backoffs / num_skipped; warned at 1, 10, 100, ...",
                    SafeguardWarning,
                    stacklevel=3,
                )
        self.num_backoffs += backoffs
        self.num_skipped += skipped

    def _block(self, index: int, block: GaussianBlock, tensors: list[Tensor], lr: float):
        """The engine's view of one Gaussian block (``None``: its gradient is not finite)."""
        p = block.parameterization
        shape = (-1,) if block.flatten else None
        u = tuple((t.detach() if shape is None else t.detach().reshape(shape)) for t in tensors)
        grads = tuple(
            torch.zeros_like(x) if t.grad is None else t.grad.reshape(x.shape)
            for x, t in zip(u, tensors)
        )
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            return None
        g_eta = expectation_gradient(p, u, grads)
        theta = p.to_natural(*u)
        if self.update == "stored":
            direction = p.push_forward(theta, g_eta)

            def propose(gamma: float) -> tuple[Tensor, ...]:
                return tuple(x - gamma * d for x, d in zip(u, direction))

            return Block(tensors, propose, lambda c: p.in_domain(*c), lr, self.num_steps, index)
        chart = p.natural_chart

        def propose_natural(gamma: float) -> tuple[Tensor, ...]:
            theta_new = tuple(t - gamma * g for t, g in zip(theta, g_eta))
            if not chart.in_domain(*theta_new):
                raise ValueError("outside the natural domain")
            return p.from_natural(*theta_new)

        return Block(tensors, propose_natural, lambda c: True, lr, self.num_steps, index)

    @torch.no_grad()
    def evaluate_loss(self, *args, **kwargs) -> float:
        """The loss without taking a step (as :meth:`pyro.infer.SVI.evaluate_loss`)."""
        if hasattr(self.loss, "loss"):
            return float(self.loss.loss(self.model, self.guide, *args, **kwargs))
        return float(self.loss(self.model, self.guide, *args, **kwargs))
