"""DSNGD and SNGD for multinomial logistic regression (MLR) over discrete features.

**Model.** Features ``x ∈ ∏_i {0..r_i−1}``, class ``y ∈ {0..s−1}``; with the one-hot features
``φ(x) ∈ {0,1}^D`` (:meth:`~natvi.expfam.NaiveBayes.one_hot`, last value of each feature is the
reference, ``D = Σ_i (r_i − 1)``) the MLR is ``p(y | x) = softmax(β + W φ(x), 0)`` with the
last class as reference: ``β [s−1]``, ``W [s−1, D]``, ``(s − 1)(1 + D)`` parameters.
It is the conditional of the joint naive-Bayes family (:class:`~natvi.expfam.NaiveBayes`),
whose natural parameters ``θ`` map linearly onto the MLR's: ``(β, W) = L θ``.

**DSNGD** (Sánchez-López & Cerquides, arXiv 2001.06744). With ``g = ∇_{(β,W)} ℓ`` the
gradient of the conditional log-loss, the step is the natural gradient *of the joint* family
applied to the lifted gradient, projected back to the MLR coordinates:

    (β, W) ← (β, W) − a/(1 + b t) · L F(μ̂_t)⁻¹ Lᵀ g,

where ``F(μ̂_t)`` is the joint Fisher at an independent running estimate ``μ̂_t`` of the dual
(mean) parameters: class and class–value counts of the observed samples plus ``pseudo_count``
max-entropy pseudo-counts (:meth:`~natvi.expfam.NaiveBayes.mean_from_counts`). Because the
joint family is dually flat, ``F(μ̂)⁻¹ Lᵀ g = (∂θ/∂μ)ᵀ Lᵀ g`` at ``μ̂`` is applied in closed
form (:meth:`~natvi.expfam.NaiveBayes.natural_gradient_at_mean`): ``O(s D)`` per step, linear
in the number of parameters. The pseudo-counts keep every cell positive, so the
preconditioner is bounded. ``fisher="dense"`` forms ``F(μ̂)`` (``O(d²)``) and solves with
:class:`natvi.linalg.Cholesky` (``O(d³)``) — the reference the closed form is tested against.

**SNGD** (Amari's stochastic natural gradient): the natural gradient of the *conditional* model,
``(β, W) ← (β, W) − a/(1 + b t) (F̄_t + λ I)⁻¹ g`` with the conditional Fisher
``F(x) = (diag p − p pᵀ) ⊗ z zᵀ`` (``p`` the first ``s − 1`` class probabilities, ``z = (1, φ(x))``)
averaged over every observed sample at the parameters of its time; dense, ``O(d²)`` per sample
and ``O(d³)`` per step.

Both optimisers take data through ``observe(x, y)``: call it *after* ``step`` for DSNGD (the
estimate ``μ̂_t`` then uses earlier samples only and is independent of the step's gradient) and
*before* ``step`` for SNGD (its Fisher needs the current batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from natvi.expfam.naive_bayes import NaiveBayes
from natvi.linalg import Cholesky
from natvi.optim.schedules import Decay, check_lr, evaluate

__all__ = ["DSNGD", "SNGD", "mlr_logits"]


def mlr_logits(beta: Tensor, W: Tensor, phi: Tensor) -> Tensor:
    """Class logits ``[B, s]`` of the MLR, ``(β + W φ, 0)``; ``phi [B, D]`` one-hot features."""
    logits = phi @ W.mT + beta
    return torch.cat([logits, logits.new_zeros(*logits.shape[:-1], 1)], -1)


class _MLROptimizer(torch.optim.Optimizer):
    """Shared plumbing: one param group ``[β, W]``, the step size ``Decay(a, b)`` = ``a / (1 + b t)``."""

    def __init__(self, params, n_classes, cardinalities, lr, decay, extra) -> None:
        self.family = NaiveBayes(n_classes, cardinalities)
        lr = check_lr("lr", lr)
        if not (isinstance(decay, int | float) and decay >= 0):
            raise ValueError(f"decay (the b of a/(1 + b t)) must be a number ≥ 0, got {decay!r}.")
        super().__init__(params, dict(lr=float(lr), decay=float(decay), **extra))
        s, D = self.family.n_classes, self.family.n_columns
        if len(self.param_groups) != 1 or len(self.param_groups[0]["params"]) != 2:
            raise ValueError(
                f"{type(self).__name__} takes exactly the two MLR parameters [beta, W] in one "
                "param group (e.g. list(model.parameters()) of models.mlr.MLR)."
            )
        beta, W = self.param_groups[0]["params"]
        if beta.shape != (s - 1,) or W.shape != (s - 1, D):
            raise ValueError(
                f"{type(self).__name__}: params must be beta [{s - 1}] and W [{s - 1}, {D}] for "
                f"{s} classes and cardinalities {self.family.cardinalities}; got "
                f"{tuple(beta.shape)} and {tuple(W.shape)}."
            )

    @property
    def _state(self) -> dict:
        return self.state[self.param_groups[0]["params"][0]]

    def _direction(self, g_beta: Tensor, g_W: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One preconditioned step ``θ ← θ − a/(1 + b t) · direction``; returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        beta, W = group["params"]
        if beta.grad is None or W.grad is None:
            return loss
        t = self._state.get("step", 0)
        lr = evaluate(Decay(group["lr"], group["decay"]), t)
        d_beta, d_W = self._direction(beta.grad, W.grad)
        beta.sub_(lr * d_beta)
        W.sub_(lr * d_W)
        self._state["step"] = t + 1
        return loss


class DSNGD(_MLROptimizer):
    """Dual stochastic natural gradient descent for MLR (module docstring for the update).

    Args:
        params: ``[β [s−1], W [s−1, D]]`` (e.g. ``models.mlr.MLR(...).parameters()``).
        n_classes: ``s``.
        cardinalities: ``(r_1, …, r_m)``.
        lr: ``a`` in the step size ``a / (1 + b t)``.
        decay: ``b`` in the step size.
        pseudo_count: max-entropy pseudo-observations per class in the estimate ``μ̂``; the
            default 10 kept early steps stable on the paper's models (``benchmarks/dfm``),
            where 1 let the first steps overshoot.
        fisher: ``"closed"`` (``O(d)``, default) or ``"dense"`` (form ``F(μ̂)``, Cholesky solve).

    Example:
        >>> beta = torch.nn.Parameter(torch.zeros(2)); W = torch.nn.Parameter(torch.zeros(2, 4))
        >>> opt = DSNGD([beta, W], n_classes=3, cardinalities=[3, 3, 2], lr=1.0, decay=0.1)
        >>> # per batch (x [B, 3] ints, y [B] ints): loss.backward(); opt.step(); opt.observe(x, y)
    """

    def __init__(
        self,
        params: Iterable,
        n_classes: int,
        cardinalities: Sequence[int],
        lr: float = 1.0,
        decay: float = 0.0,
        pseudo_count: float = 10.0,
        fisher: str = "closed",
    ) -> None:
        if not (isinstance(pseudo_count, int | float) and pseudo_count > 0):
            raise ValueError(
                f"pseudo_count must be > 0 (it keeps the Fisher estimate bounded), got {pseudo_count!r}."
            )
        if fisher not in ("closed", "dense"):
            raise ValueError(f"fisher must be 'closed' or 'dense', got {fisher!r}.")
        extra = dict(pseudo_count=float(pseudo_count), fisher=fisher)
        super().__init__(params, n_classes, cardinalities, lr, decay, extra)

    def _counts(self) -> tuple[Tensor, Tensor]:
        st = self._state
        if "class_counts" not in st:
            W = self.param_groups[0]["params"][1]
            s, D = self.family.n_classes, self.family.n_columns
            st["class_counts"] = torch.zeros(s, dtype=W.dtype, device=W.device)
            st["cell_counts"] = torch.zeros(s, D, dtype=W.dtype, device=W.device)
        return st["class_counts"], st["cell_counts"]

    @torch.no_grad()
    def observe(self, x: Tensor, y: Tensor) -> None:
        """Add samples ``x [B, m]``, ``y [B]`` (integers) to the count accumulators, ``O(B m)``."""
        class_counts, cell_counts = self._counts()
        y = _check_labels(y, x, self.family.n_classes)
        phi = self.family.one_hot(x, dtype=cell_counts.dtype).reshape(-1, self.family.n_columns)
        class_counts.add_(torch.bincount(y, minlength=self.family.n_classes).to(class_counts))
        cell_counts.index_add_(0, y, phi)

    def mean_estimate(self) -> tuple[Tensor, Tensor]:
        """The current dual estimate ``μ̂ = (p̂(y) [s−1], p̂(y, x_i = v) [s, D])``."""
        class_counts, cell_counts = self._counts()
        pseudo = self.param_groups[0]["pseudo_count"]
        return self.family.mean_from_counts(class_counts, cell_counts, pseudo)

    def _direction(self, g_beta: Tensor, g_W: Tensor) -> tuple[Tensor, Tensor]:
        fam, mu = self.family, self.mean_estimate()
        lifted = fam.lift(g_beta, g_W)
        if self.param_groups[0]["fisher"] == "closed":
            nat = fam.natural_gradient_at_mean(mu, lifted)
        else:
            flat = torch.cat([lifted[0], lifted[1].reshape(-1)])
            x = Cholesky().solve(fam.dense_fisher(mu), flat).x
            s = fam.n_classes
            nat = (x[: s - 1], x[s - 1 :].reshape(s, fam.n_columns))
        return fam.conditional(nat)


class SNGD(_MLROptimizer):
    """Stochastic natural gradient for MLR with the conditional model's dense Fisher.

    Args:
        params: ``[β [s−1], W [s−1, D]]``.
        n_classes, cardinalities, lr, decay: as for :class:`DSNGD`.
        damping: ``λ > 0`` added to the averaged Fisher before the solve.

    Example:
        >>> opt = SNGD([beta, W], n_classes=3, cardinalities=[3, 3, 2], lr=1.0, damping=1e-3)
        >>> # per batch: opt.observe(x, y); loss.backward(); opt.step()
    """

    def __init__(
        self,
        params: Iterable,
        n_classes: int,
        cardinalities: Sequence[int],
        lr: float = 1.0,
        decay: float = 0.0,
        damping: float = 1e-3,
    ) -> None:
        if not (isinstance(damping, int | float) and damping > 0):
            raise ValueError(f"damping must be > 0 (the solve needs it), got {damping!r}.")
        super().__init__(params, n_classes, cardinalities, lr, decay, dict(damping=float(damping)))

    @torch.no_grad()
    def observe(self, x: Tensor, y: Tensor | None = None) -> None:
        """Average the conditional Fisher of ``x [B, m]`` at the current parameters into ``F̄``."""
        beta, W = self.param_groups[0]["params"]
        phi = self.family.one_hot(x, dtype=W.dtype)
        p = torch.softmax(mlr_logits(beta, W, phi), -1)[:, :-1]  # [B, s−1]
        z = torch.cat([phi.new_ones(phi.shape[0], 1), phi], -1)  # [B, 1+D]
        k, n = p.shape[-1], z.shape[-1]
        # Σ_b diag(p_b) ⊗ z_b z_bᵀ (block diagonal) − Σ_b (p_b ⊗ z_b)(p_b ⊗ z_b)ᵀ (one GEMM)
        V = (p.unsqueeze(-1) * z.unsqueeze(-2)).reshape(-1, k * n)
        F_sum = -(V.mT @ V)
        blocks = torch.einsum("bk,bi,bj->kij", p, z, z)
        F_sum = F_sum + torch.block_diag(*blocks)
        st = self._state
        count = st.get("count", 0) + phi.shape[0]
        if "fisher" in st:
            F_sum = F_sum + st["fisher"] * st["count"]
        st["fisher"], st["count"] = F_sum / count, count

    def _direction(self, g_beta: Tensor, g_W: Tensor) -> tuple[Tensor, Tensor]:
        g = torch.cat([g_beta.unsqueeze(-1), g_W], -1)  # [s−1, 1+D], matches z's order
        d = g.numel()
        F = self._state.get("fisher", g.new_zeros(d, d))
        A = F + self.param_groups[0]["damping"] * torch.eye(d, dtype=g.dtype, device=g.device)
        x = Cholesky().solve(A, g.reshape(-1)).x.reshape(g.shape)
        return x[:, 0], x[:, 1:]


def _check_labels(y: Tensor, x: Tensor, s: int) -> Tensor:
    if y.dtype.is_floating_point or y.shape != x.shape[:-1]:
        raise ValueError(
            f"y must be an integer tensor of class labels shaped like x without its last "
            f"dimension, {tuple(x.shape[:-1])}; got dtype {y.dtype} and shape {tuple(y.shape)}."
        )
    if bool(((y < 0) | (y >= s)).any()):
        raise ValueError(
            f"y must hold class labels 0..{s - 1}; got {int(y.min())}..{int(y.max())}."
        )
    return y.reshape(-1).long()
