"""Curvature of a torch model's loss: the generalised Gauss–Newton (GGN) and the empirical Fisher.

For a model ``f(θ; x)`` (any ``nn.Module``; ``θ ∈ R^P`` its trainable parameters, flattened in
``model.named_parameters()`` order; outputs ``f_n ∈ R^d`` per example, any trailing shape) and a
loss ``L(θ) = (1/B) Σ_n ℓ(f_n, y_n)``:

- GGN ``G = (1/B) Σ_n J_nᵀ H_n J_n``, ``J_n = ∂f_n/∂θ`` ``[d, P]``, ``H_n = ∂²ℓ/∂f²`` ``[d, d]``
  (for a negative log-likelihood in natural parameters — cross-entropy of logits, Bernoulli
  with logits, Gaussian — the GGN equals the Fisher of the model's predictive distribution);
- empirical Fisher ``F = (1/B) Σ_n g_n g_nᵀ`` with per-example gradients ``g_n = J_nᵀ ∇_f ℓ_n``.

The loss is a callable ``loss(outputs, targets) -> scalar`` that averages a per-example loss
over the batch (torch's ``reduction="mean"``: ``F.cross_entropy``, ``F.mse_loss``,
``F.binary_cross_entropy_with_logits``, ``nn.CrossEntropyLoss()``, or your own). ``ℓ`` on one
example is that callable on a batch of one, and ``∇_f ℓ_n``, ``H_n`` and a square root
``S_n`` (``H_n = S_n S_nᵀ``, from the eigendecomposition; round-off negatives clipped) come from
autodiff, vmapped over the batch — nothing is written per loss. The default (``loss=None``) is
the cross-entropy of logits ``[B, C]`` against class indices ``[B]``.

Three ways to use the curvature, all from ``torch.func``:

- matrix-free products ``G V`` (a JVP, the output Hessian, a VJP; ``vmap`` over columns);
- a factor ``U [P, r]`` with ``G = U Uᵀ`` (``r = B d`` for the GGN, ``U = [J_nᵀ S_n] / √B``;
  ``r = B`` for the empirical Fisher), so ``λ I + G`` is a
  :class:`~natvi.linalg.LowRankPlusDiag` that :class:`~natvi.linalg.Woodbury` solves exactly;
- the dense matrix ``[P, P]`` (small models, tests).

Example:
    >>> curv = Curvature(model, X, y, loss=torch.nn.functional.cross_entropy)
    >>> A = curv.operator(damping=1e-3)                     # λ I + G, matrix-free
    >>> nat = natvi.linalg.CG(tol=1e-10).solve(A, curv.grad).x
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap
from torch.nn import functional as F

from natvi._validation import check_finite
from natvi.linalg.base import LowRankPlusDiag, Operator

__all__ = [
    "Curvature",
    "as_loss",
    "flat_params",
    "LOSSES",
    "loss_value",
    "output_grad",
    "output_hvp",
    "output_hessian_sqrt",
]

Loss = Callable[[Tensor, Tensor], Tensor]


def _half_squared_error(f: Tensor, y: Tensor) -> Tensor:
    return 0.5 * (f - y.reshape(f.shape)).pow(2).reshape(f.shape[0], -1).sum(-1).mean()


def _bernoulli(f: Tensor, y: Tensor) -> Tensor:
    bce = F.binary_cross_entropy_with_logits(f, y.reshape(f.shape).to(f.dtype), reduction="none")
    return bce.reshape(f.shape[0], -1).sum(-1).mean()


_NAMED: dict[str, Loss] = {
    "cross_entropy": F.cross_entropy, "mse": _half_squared_error, "bernoulli": _bernoulli
}
LOSSES = tuple(_NAMED)  # deprecated names, kept for one release


def as_loss(loss: str | Loss | None, stacklevel: int = 3) -> Loss:
    """The loss callable for ``loss``: ``None`` is ``F.cross_entropy``; the names of
    :data:`LOSSES` are deprecated (``"mse"`` is ``½‖f − y‖²`` per example, ``"bernoulli"`` the
    Bernoulli NLL of logits summed over outputs)."""
    if loss is None:
        return F.cross_entropy
    if isinstance(loss, str):
        if loss not in _NAMED:
            raise ValueError(
                f"loss must be one of {LOSSES} (deprecated names) or a callable "
                f"loss(outputs, targets) averaging over the batch, got {loss!r}."
            )
        warnings.warn(
            f"loss={loss!r} is deprecated; pass a callable loss(outputs, targets) averaging over "
            "the batch, e.g. torch.nn.functional.cross_entropy. Names will be removed in the "
            "next release.", DeprecationWarning, stacklevel=stacklevel,
        )
        return _NAMED[loss]
    if not callable(loss):
        raise ValueError(f"loss must be a callable loss(outputs, targets), got {loss!r}.")
    return loss


def flat_params(model: nn.Module) -> tuple[list[str], list[Tensor]]:
    """Names and tensors of the trainable parameters (``requires_grad``), in module order."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model has no trainable parameters (none with requires_grad=True).")
    return [n for n, _ in named], [p for _, p in named]


class _PerExample:
    """``ℓ(f_n, y_n)`` of one example as a function of its output row ``f_n [d]``, and its
    derivatives over a batch of rows ``[B, d]`` (autodiff, vmapped)."""

    def __init__(self, loss: Loss, out_shape: torch.Size) -> None:
        self.loss, self.out_shape = loss, out_shape

    def __call__(self, f_row: Tensor, y_n: Tensor) -> Tensor:
        return self.loss(f_row.reshape(1, *self.out_shape), y_n.unsqueeze(0))

    def grad(self, rows: Tensor, targets: Tensor) -> Tensor:
        return vmap(grad(self))(rows, targets)

    def grad_and_hessian(self, rows: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``(∇_f ℓ_n [B, d], H_n [B, d, d])`` in one reverse-over-reverse pass."""

        def g(f_row: Tensor, y_n: Tensor) -> tuple[Tensor, Tensor]:
            out = grad(self)(f_row, y_n)
            return out, out

        H, g_rows = vmap(jacrev(g, has_aux=True))(rows, targets)
        return g_rows, H


def _sqrt_psd(H: Tensor) -> Tensor:
    """``S`` with ``S Sᵀ = H`` for symmetric PSD ``H [..., d, d]`` (negatives clipped to 0)."""
    lam, Q = torch.linalg.eigh(H)
    return Q * lam.clamp_min(0).sqrt().unsqueeze(-2)


def _rows(outputs: Tensor) -> Tensor:
    return outputs.reshape(outputs.shape[0], -1)


class Curvature:
    """GGN or empirical Fisher of ``model`` at its current parameters on one batch.

    Construction runs one forward pass (kept for VJPs) and gives :attr:`loss`, :attr:`grad`
    (``∇_θ L``, flat ``[P]``) and :attr:`outputs` (``[B, d]``, the model's outputs flattened
    per example). Products, the factor and the dense matrix are computed on demand; the model's
    parameters are read, never modified.

    Args:
        model: an ``nn.Module`` mapping ``inputs [B, ...]`` to outputs ``[B, ...]``. Layers must
            act on examples independently (no batch-norm in training mode).
        inputs: ``[B, ...]``.
        targets: ``[B, ...]``, what ``loss`` takes (class indices ``[B]`` for the default).
        loss: ``loss(outputs, targets) -> scalar``, the batch mean of a per-example loss
            (default: ``F.cross_entropy``); see the module docstring.
        kind: ``"ggn"`` (default) or ``"empirical"`` (empirical Fisher).

    Shapes: ``P`` = number of trainable parameters, ``d`` = outputs per example.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: Tensor,
        targets: Tensor,
        loss: Loss | str | None = None,
        *,
        kind: str = "ggn",
    ) -> None:
        loss_fn = as_loss(loss)
        if kind not in ("ggn", "empirical"):
            raise ValueError(f"kind must be 'ggn' or 'empirical' (Fisher), got {kind!r}.")
        if not torch.is_tensor(inputs) or inputs.dim() < 1 or inputs.shape[0] < 1:
            raise ValueError("inputs must be a tensor [B, ...] with at least one example.")
        if not torch.is_tensor(targets) or targets.shape[:1] != inputs.shape[:1]:
            raise ValueError(
                f"targets must be a tensor with the batch size of inputs ({inputs.shape[0]}), got "
                f"{tuple(targets.shape) if torch.is_tensor(targets) else type(targets).__name__}."
            )
        check_finite("inputs", inputs)
        self.model, self.kind = model, kind
        self.inputs, self.targets = inputs, targets
        self.names, params = flat_params(model)
        self.shapes = [p.shape for p in params]
        self.theta = torch.cat([p.detach().reshape(-1) for p in params])
        self.size = self.theta.numel()
        self.batch_size = inputs.shape[0]
        shapes: list[torch.Size] = []

        def forward(theta: Tensor) -> Tensor:
            out = functional_call(model, self.unflatten(theta), (inputs,))
            shapes.append(out.shape)
            return _rows(out)

        outputs, self._vjp = vjp(forward, self.theta)
        self.outputs = outputs.detach()
        out_shape = shapes[0]
        if loss is None or loss == "cross_entropy":
            _check_class_indices(out_shape, targets)
        self.ell = _PerExample(loss_fn, out_shape[1:])
        self.loss = loss_fn(self.outputs.reshape(-1, *out_shape[1:]), targets).detach()
        self._hessians: Tensor | None = None
        if kind == "ggn":
            self._out_grad, self._hessians = self.ell.grad_and_hessian(self.outputs, targets)
        else:
            self._out_grad = self.ell.grad(self.outputs, targets)
        (self.grad,) = self._vjp(self._out_grad / self.batch_size)
        self._factor: Tensor | None = None
        self._per_example: Tensor | None = None

    # ------------------------------------------------------------------ parameters
    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """``{name: tensor}`` from a flat vector ``[P]``."""
        chunks = torch.split(theta, [math.prod(s) for s in self.shapes])
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}

    def _forward(self, theta: Tensor) -> Tensor:
        return _rows(functional_call(self.model, self.unflatten(theta), (self.inputs,)))

    def _forward_one(self, theta: Tensor, x: Tensor) -> Tensor:
        out = functional_call(self.model, self.unflatten(theta), (x.unsqueeze(0),))
        return out.reshape(-1)

    def loss_at(self, theta: Tensor) -> Tensor:
        """``L`` at other parameters ``theta [P]`` on the same batch (one forward pass)."""
        with torch.no_grad():
            out = self._forward(theta).reshape(-1, *self.ell.out_shape)
            return self.ell.loss(out, self.targets)

    # ------------------------------------------------------------------ products
    def output_hessians(self) -> Tensor:
        """``H_n = ∂²ℓ(f_n, y_n)/∂f_n²`` stacked ``[B, d, d]``."""
        if self._hessians is None:
            self._hessians = self.ell.grad_and_hessian(self.outputs, self.targets)[1]
        return self._hessians

    def matmat(self, V: Tensor) -> Tensor:
        """``G V`` for a block ``V [P, k]`` (matrix-free), ``[P, k]``."""
        if self.kind == "empirical":
            Gn = self.per_example_grads()
            return Gn.mT @ (Gn @ V) / self.batch_size
        JV = vmap(lambda v: jvp(self._forward, (self.theta,), (v,))[1])(V.mT)  # [k, B, d]
        HJV = torch.einsum("nij,knj->kni", self.output_hessians(), JV) / self.batch_size
        return vmap(lambda u: self._vjp(u)[0])(HJV).mT

    def matvec(self, v: Tensor) -> Tensor:
        """``G v`` for ``v [P]``."""
        return self.matmat(v.unsqueeze(-1)).squeeze(-1)

    def per_example_grads(self) -> Tensor:
        """``g_n = J_nᵀ ∇_f ℓ_n`` stacked ``[B, P]``."""
        if self._per_example is None:

            def one(x: Tensor, y: Tensor) -> Tensor:
                return grad(lambda t: self.ell(self._forward_one(t, x), y))(self.theta)

            self._per_example = vmap(one)(self.inputs, self.targets)
        return self._per_example

    def jacobians(self) -> Tensor:
        """Per-example Jacobians ``J_n = ∂f_n/∂θ`` ``[B, d, P]``."""
        return vmap(jacrev(self._forward_one), in_dims=(None, 0))(self.theta, self.inputs)

    def factor(self) -> Tensor:
        """``U [P, r]`` with ``G = U Uᵀ``: ``[J_nᵀ S_n]_n / √B`` (``r = B d``) for the GGN,
        ``[g_n]_n / √B`` (``r = B``) for the empirical Fisher."""
        if self._factor is None:
            if self.kind == "empirical":
                U = self.per_example_grads().mT
            else:
                S = _sqrt_psd(self.output_hessians())
                U = torch.einsum("bdp,bde->pbe", self.jacobians(), S).reshape(self.size, -1)
            self._factor = U / math.sqrt(self.batch_size)
        return self._factor

    def dense(self) -> Tensor:
        """``G [P, P]`` assembled from the factor (small models)."""
        U = self.factor()
        return U @ U.mT

    # ------------------------------------------------------------------ damped systems
    def operator(self, damping: float) -> Operator:
        """``λ I + G`` as a matrix-free :class:`~natvi.linalg.Operator`."""
        lam = _check_damping(damping)
        return Operator(
            lambda v: lam * v + self.matvec(v),
            self.size,
            matmat=lambda V: lam * V + self.matmat(V),
            dtype=self.theta.dtype,
            device=self.theta.device,
        )

    def low_rank(self, damping: float) -> LowRankPlusDiag:
        """``λ I + U Uᵀ`` as a :class:`~natvi.linalg.LowRankPlusDiag` (for Woodbury)."""
        return LowRankPlusDiag(_check_damping(damping), self.factor())

    def damped_dense(self, damping: float) -> Tensor:
        """``λ I + G`` as a dense ``[P, P]`` tensor."""
        lam = _check_damping(damping)
        return self.dense() + lam * torch.eye(self.size, dtype=self.theta.dtype,
                                              device=self.theta.device)


def _check_class_indices(out_shape: torch.Size, targets: Tensor) -> None:
    if len(out_shape) != 2 or targets.dim() != 1 or targets.is_floating_point():
        raise ValueError(
            f"the default loss (cross-entropy) takes logits [B, C] and class indices [B] (an "
            f"integer tensor); got outputs {tuple(out_shape)[1:]} per example and targets of "
            f"dtype {targets.dtype}, shape {tuple(targets.shape)}. Pass loss= for other targets."
        )


def _check_damping(damping: float) -> float:
    if not (isinstance(damping, int | float) and math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be a finite float ≥ 0 (λ of λ I + G), got {damping!r}.")
    return float(damping)


# ---------------------------------------------------------------- deprecated helpers
def loss_value(outputs: Tensor, targets: Tensor, loss: str | Loss) -> Tensor:
    """Deprecated with the loss names: ``L = (1/B) Σ_n ℓ(f_n, y_n)``; call the loss itself."""
    return as_loss(loss)(outputs, targets)


def _dummy_targets(outputs: Tensor, loss: Loss) -> Tensor:
    """The named losses' Hessians do not depend on the targets: any valid ones will do."""
    if loss is F.cross_entropy:
        return torch.zeros(outputs.shape[0], dtype=torch.int64, device=outputs.device)
    return torch.zeros_like(outputs)


def output_grad(outputs: Tensor, targets: Tensor, loss: str | Loss) -> Tensor:
    """Deprecated: per-example ``∇_f ℓ(f_n, y_n)`` ``[B, d]`` (see :class:`Curvature`)."""
    fn = as_loss(loss)
    return _PerExample(fn, outputs.shape[1:]).grad(_rows(outputs), targets)


def output_hvp(outputs: Tensor, V: Tensor, loss: str) -> Tensor:
    """Deprecated: ``H_n v_n`` for a named loss, outputs ``[B, d]``, ``V [..., B, d]``."""
    fn = as_loss(loss)
    ell = _PerExample(fn, outputs.shape[1:])
    H = ell.grad_and_hessian(_rows(outputs), _dummy_targets(outputs, fn))[1]
    return torch.einsum("nij,...nj->...ni", H, V)


def output_hessian_sqrt(outputs: Tensor, loss: str) -> Tensor:
    """Deprecated: ``S_n [B, d, d]`` with ``H_n = S_n S_nᵀ`` for a named loss."""
    fn = as_loss(loss)
    ell = _PerExample(fn, outputs.shape[1:])
    return _sqrt_psd(ell.grad_and_hessian(_rows(outputs), _dummy_targets(outputs, fn))[1])
