"""Curvature of a torch model's loss: the generalised Gauss–Newton (GGN) and the empirical Fisher.

For a model ``f(θ; x) ∈ R^d`` (any ``nn.Module``; ``θ ∈ R^P`` its trainable parameters,
flattened in ``model.named_parameters()`` order) and a loss of exponential-family form
``L(θ) = (1/B) Σ_n ℓ(f_n, y_n)`` with ``f_n = f(θ; x_n)``:

- GGN ``G = (1/B) Σ_n J_nᵀ H_n J_n``, ``J_n = ∂f_n/∂θ`` ``[d, P]``, ``H_n = ∂²ℓ/∂f²`` ``[d, d]``
  (for these losses the GGN equals the Fisher of the model's predictive distribution);
- empirical Fisher ``F = (1/B) Σ_n g_n g_nᵀ`` with per-example gradients ``g_n = J_nᵀ ∇_f ℓ_n``.

Losses (``ℓ`` per example, ``H`` its Hessian in the outputs, ``S`` a square root ``H = S Sᵀ``):

==================  ===============================  ====================  =======================
``loss``            ``ℓ(f, y)``                      ``H``                 ``S``
==================  ===============================  ====================  =======================
``cross_entropy``   ``logsumexp(f) − f_y``           ``diag(p) − p pᵀ``    ``diag(√p) − p √pᵀ``
``mse``             ``½ ‖f − y‖²``                   ``I``                 ``I``
``bernoulli``       ``Σ_j softplus(f_j) − y_j f_j``  ``diag(σ(1 − σ))``    ``diag(√(σ(1 − σ)))``
==================  ===============================  ====================  =======================

(``p = softmax(f)``, ``σ = sigmoid(f)``; ``mse`` is the Gaussian negative log-likelihood with unit
variance, i.e. half the sum of squares per example — not ``nn.MSELoss``'s mean.)

Three ways to use the curvature, all from ``torch.func``:

- matrix-free products ``G V`` (a JVP, the output Hessian, a VJP; ``vmap`` over columns);
- a factor ``U [P, r]`` with ``G = U Uᵀ`` (``r = B d`` for the GGN, ``U = [J_nᵀ S_n] / √B``;
  ``r = B`` for the empirical Fisher), so ``λ I + G`` is a
  :class:`~natvi.linalg.LowRankPlusDiag` that :class:`~natvi.linalg.Woodbury` solves exactly;
- the dense matrix ``[P, P]`` (small models, tests).

Example:
    >>> curv = Curvature(model, X, y, loss="cross_entropy")
    >>> A = curv.operator(damping=1e-3)                     # λ I + G, matrix-free
    >>> nat = natvi.linalg.CG(tol=1e-10).solve(A, curv.grad).x
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap
from torch.nn import functional as F

from natvi._validation import check_finite
from natvi.linalg.base import LowRankPlusDiag, Operator

__all__ = [
    "LOSSES",
    "Curvature",
    "loss_value",
    "output_grad",
    "output_hvp",
    "output_hessian_sqrt",
    "flat_params",
]

LOSSES = ("cross_entropy", "mse", "bernoulli")


def _check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")


def _as_rows(outputs: Tensor, targets: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    """Outputs as ``[B, d]`` and targets as ``[B]`` (class indices) or ``[B, d]``."""
    if outputs.dim() == 1 and loss != "cross_entropy":
        outputs = outputs.unsqueeze(-1)
    if outputs.dim() != 2:
        raise ValueError(
            f"the model's outputs must be [B, d] (or [B] for loss={loss!r}); got "
            f"{tuple(outputs.shape)}. Flatten extra output dimensions in the model."
        )
    if loss == "cross_entropy":
        if targets.shape != outputs.shape[:1] or targets.is_floating_point():
            raise ValueError(
                f"targets for cross_entropy must be class indices [B] = [{outputs.shape[0]}] "
                f"(an integer tensor); got dtype {targets.dtype}, shape {tuple(targets.shape)}."
            )
        return outputs, targets
    targets = targets.reshape(outputs.shape) if targets.numel() == outputs.numel() else targets
    if targets.shape != outputs.shape:
        raise ValueError(
            f"targets must match the outputs {tuple(outputs.shape)} for loss={loss!r}; got "
            f"{tuple(targets.shape)}."
        )
    return outputs, targets.to(outputs.dtype)


def loss_value(outputs: Tensor, targets: Tensor, loss: str) -> Tensor:
    """``L = (1/B) Σ_n ℓ(f_n, y_n)`` (a scalar) for outputs ``[B, d]``."""
    _check_loss(loss)
    f, y = _as_rows(outputs, targets, loss)
    if loss == "cross_entropy":
        return F.cross_entropy(f, y)
    if loss == "mse":
        return 0.5 * (f - y).pow(2).sum(-1).mean()
    return F.binary_cross_entropy_with_logits(f, y, reduction="none").sum(-1).mean()


def output_grad(outputs: Tensor, targets: Tensor, loss: str) -> Tensor:
    """Per-example ``∇_f ℓ(f_n, y_n)`` ``[B, d]`` in closed form."""
    _check_loss(loss)
    f, y = _as_rows(outputs, targets, loss)
    if loss == "cross_entropy":
        return torch.softmax(f, -1) - F.one_hot(y, f.shape[-1]).to(f.dtype)
    if loss == "mse":
        return f - y
    return torch.sigmoid(f) - y


def output_hvp(outputs: Tensor, V: Tensor, loss: str) -> Tensor:
    """``H_n v_n`` for outputs ``[B, d]`` and ``V [..., B, d]`` (leading dims broadcast)."""
    _check_loss(loss)
    f = outputs.unsqueeze(-1) if outputs.dim() == 1 else outputs
    if loss == "cross_entropy":
        p = torch.softmax(f, -1)
        return p * V - p * (p * V).sum(-1, keepdim=True)
    if loss == "mse":
        return V
    s = torch.sigmoid(f)
    return s * (1 - s) * V


def output_hessian_sqrt(outputs: Tensor, loss: str) -> Tensor:
    """``S_n [B, d, d]`` with ``H_n = S_n S_nᵀ`` (closed form; see the module table)."""
    _check_loss(loss)
    f = outputs.unsqueeze(-1) if outputs.dim() == 1 else outputs
    if loss == "cross_entropy":
        p = torch.softmax(f, -1)
        sq = p.sqrt()
        return torch.diag_embed(sq) - p.unsqueeze(-1) * sq.unsqueeze(-2)
    if loss == "mse":
        return torch.eye(f.shape[-1], dtype=f.dtype, device=f.device).expand(*f.shape, f.shape[-1])
    s = torch.sigmoid(f)
    return torch.diag_embed((s * (1 - s)).sqrt())


def flat_params(model: nn.Module) -> tuple[list[str], list[Tensor]]:
    """Names and tensors of the trainable parameters (``requires_grad``), in module order."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model has no trainable parameters (none with requires_grad=True).")
    return [n for n, _ in named], [p for _, p in named]


class Curvature:
    """GGN or empirical Fisher of ``model`` at its current parameters on one batch.

    Construction runs one forward pass (kept for VJPs) and gives :attr:`loss`, :attr:`grad`
    (``∇_θ L``, flat ``[P]``) and :attr:`outputs`. Products, the factor and the dense matrix
    are computed on demand; the model's parameters are read, never modified.

    Args:
        model: an ``nn.Module`` mapping ``inputs [B, ...]`` to outputs ``[B, d]`` (or ``[B]``
            for ``mse``/``bernoulli``). Layers must act on examples independently (no
            batch-norm in training mode) for the per-example factor.
        inputs: ``[B, ...]``.
        targets: class indices ``[B]`` (``cross_entropy``) or values shaped like the outputs.
        loss: ``"cross_entropy"``, ``"mse"`` or ``"bernoulli"`` (see the module table).
        kind: ``"ggn"`` (default) or ``"empirical"`` (empirical Fisher).

    Shapes: ``P`` = number of trainable parameters, ``d`` = outputs per example.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: Tensor,
        targets: Tensor,
        loss: str = "cross_entropy",
        *,
        kind: str = "ggn",
    ) -> None:
        _check_loss(loss)
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
        self.model, self.loss_name, self.kind = model, loss, kind
        self.inputs, self.targets = inputs, targets
        self.names, params = flat_params(model)
        self.shapes = [p.shape for p in params]
        self.theta = torch.cat([p.detach().reshape(-1) for p in params])
        self.size = self.theta.numel()
        self.batch_size = inputs.shape[0]
        outputs, self._vjp = vjp(self._forward, self.theta)
        self.outputs = outputs.detach()
        self._out_grad = output_grad(self.outputs, targets, loss)
        self.loss = loss_value(self.outputs, targets, loss)
        (self.grad,) = self._vjp(self._out_grad / self.batch_size)
        self._factor: Tensor | None = None
        self._per_example: Tensor | None = None

    # ------------------------------------------------------------------ parameters
    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """``{name: tensor}`` from a flat vector ``[P]``."""
        chunks = torch.split(theta, [math.prod(s) for s in self.shapes])
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}

    def _forward(self, theta: Tensor) -> Tensor:
        out = functional_call(self.model, self.unflatten(theta), (self.inputs,))
        return out.unsqueeze(-1) if out.dim() == 1 else out

    def _forward_one(self, theta: Tensor, x: Tensor) -> Tensor:
        out = functional_call(self.model, self.unflatten(theta), (x.unsqueeze(0),))
        return out.reshape(-1)

    def loss_at(self, theta: Tensor) -> Tensor:
        """``L`` at other parameters ``theta [P]`` on the same batch (one forward pass)."""
        with torch.no_grad():
            return loss_value(self._forward(theta), self.targets, self.loss_name)

    # ------------------------------------------------------------------ products
    def matmat(self, V: Tensor) -> Tensor:
        """``G V`` for a block ``V [P, k]`` (matrix-free), ``[P, k]``."""
        if self.kind == "empirical":
            Gn = self.per_example_grads()
            return Gn.mT @ (Gn @ V) / self.batch_size
        cols = V.mT
        JV = vmap(lambda v: jvp(self._forward, (self.theta,), (v,))[1])(cols)
        HJV = output_hvp(self.outputs, JV, self.loss_name) / self.batch_size
        return vmap(lambda u: self._vjp(u)[0])(HJV).mT

    def matvec(self, v: Tensor) -> Tensor:
        """``G v`` for ``v [P]``."""
        return self.matmat(v.unsqueeze(-1)).squeeze(-1)

    def per_example_grads(self) -> Tensor:
        """``g_n = J_nᵀ ∇_f ℓ_n`` stacked ``[B, P]``."""
        if self._per_example is None:

            def one(x: Tensor, y: Tensor) -> Tensor:
                def ell(t: Tensor) -> Tensor:
                    f = self._forward_one(t, x).unsqueeze(0)
                    return loss_value(f, y.unsqueeze(0), self.loss_name)

                return grad(ell)(self.theta)

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
                S = output_hessian_sqrt(self.outputs, self.loss_name)
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


def _check_damping(damping: float) -> float:
    if not (isinstance(damping, int | float) and math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be a finite float ≥ 0 (λ of λ I + G), got {damping!r}.")
    return float(damping)
