"""One Cholesky of the precision for the Gaussian's moments, with a closed-form backward.

:class:`natvi.parameterizations.Natural` maps ``θ -> (m, S, log det S)`` through
:class:`_NaturalMoments`: one Cholesky of ``P = −2 θ2`` (reused from the validity check of the
proposal the optimiser accepted when it is bit for bit the same matrix), and a backward pass that
also records ``∇_η L`` — the natural gradient in natural coordinates — so that
:func:`natvi.natural_gradient` needs no second natural→mean map of the same θ
(:func:`recorded_expectation_gradient`).
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from natvi._linalg import (
    cho_solve_vec,
    cholesky,
    cholesky_failed,
    cholesky_inverse,
    symmetrize,
)
from natvi._validation import all_finite

__all__ = ["natural_moments", "natural_moments_backward", "precision",
           "record_expectation_gradient", "recorded_expectation_gradient", "remember_factor",
           "version_refs"]


def precision(theta2: Tensor) -> Tensor:
    """``P = −2·sym(θ2) = −(θ2 + θ2ᵀ)`` ``[..., M, M]`` (the one formula, so that the validity
    check and the forward pass factorise bit for bit the same matrix)."""
    return (theta2 + theta2.mT).neg_()


def _round_trip_ok(P: Tensor, S: Tensor, m: Tensor) -> bool:
    """Whether ``η2 − η1 η1ᵀ = (S + m mᵀ) − m mᵀ`` is positive definite in working precision.

    Rounding perturbs ``S`` by ``E`` with ``‖E‖₂ ≤ 2u (‖S‖_F + ‖m‖²) ≤ 2u (tr S + ‖m‖²)`` (u the
    unit roundoff; ``S ≻ 0``), and ``λ_min(S) = 1 / λ_max(P) ≥ 1 / tr P``. When that lower bound
    exceeds ``8 (M + 2)² u (tr S + ‖m‖²)`` — Weyl's bound on E with a wide margin for the
    factorisation's own rounding — the round trip is positive definite and no Cholesky is
    needed (the usual case in float64; the traces cost O(M), not a pass over the matrices);
    otherwise the Cholesky decides, as it always did.
    """
    M = P.shape[-1]
    u = torch.finfo(P.dtype).eps / 2
    bound = 1.0 / (8.0 * (M + 2) ** 2 * u)
    if P.dim() == 2:  # (the unbatched q: three reductions, one comparison)
        if float(P.trace() * torch.dot(m, m).add_(S.trace())) < bound:
            return True
    else:
        trace_P = P.diagonal(dim1=-2, dim2=-1).sum(-1)
        scale = S.diagonal(dim1=-2, dim2=-1).sum(-1) + m.square().sum(-1)
        if bool((trace_P * scale < bound).all()):
            return True
    # (a NaN or an infinity in S or m, or an overflowing m mᵀ, also lands here: every
    # comparison above is False. Not every Cholesky backend reports a NaN pivot, so the
    # round-trip matrix's finiteness is checked in so many words.)
    mmT = m.unsqueeze(-1) * m.unsqueeze(-2)
    back = (S + mmT) - mmT
    if not all_finite(back):
        return False
    _, info = torch.linalg.cholesky_ex(back)
    return not cholesky_failed(info)


# What in_domain computed for the last q it accepted, one per (shape, dtype, device): the
# candidate (θ1, θ2) with L_P, S = P⁻¹ and m = S θ1. The next forward pass at that q (once the
# optimiser has copied it in) takes them when its θ equals the candidate bit for bit; taken
# once (popped), so the outputs are fresh tensors of that one autograd node. A pass that takes
# no gradient (a prediction or a logged ELBO between steps) gets copies and leaves them for the
# training pass.
_FACTORS: dict[tuple, tuple[Tensor, ...]] = {}


def remember_factor(theta1: Tensor, theta2: Tensor, L_P: Tensor, S: Tensor, m: Tensor) -> None:
    """Keep ``(L_P, S = P⁻¹, m = S θ1)`` of an accepted candidate ``(θ1, θ2)`` (tensors nothing
    else writes to) for the next forward pass."""
    _FACTORS[(theta2.shape, theta2.dtype, theta2.device)] = (theta1, theta2, L_P, S, m)


def _natural_moments(theta1: Tensor, theta2: Tensor, take: bool = True
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """``(L_P, S, m)`` of ``(θ1, θ2)``: in_domain's, if it factorised this very q (``take``:
    for a pass that takes gradients, which consumes them; else copies of ``S`` and ``m``, ``L_P``
    read only), else one Cholesky of ``P``, ``cholesky_inverse`` and two triangular solves."""
    key = (theta2.shape, theta2.dtype, theta2.device)
    hit = _FACTORS.get(key)
    if hit is not None:
        if (hit[0].shape == theta1.shape and torch.equal(hit[1], theta2)
                and torch.equal(hit[0], theta1)):
            if take:
                del _FACTORS[key]
                return hit[2], hit[3], hit[4]
            return hit[2], hit[3].clone(), hit[4].clone()
        del _FACTORS[key]  # (another q: stale)
    L_P = cholesky(precision(theta2), "the precision −2·theta2")
    return L_P, cholesky_inverse(L_P), cho_solve_vec(theta1, L_P)


# ∇_η L recorded by _NaturalMoments' backward, keyed on id(θ1): (weakref θ1, weakref θ2,
# versions of θ1, θ2 at the forward pass, ∇_θ1 L, ∇_θ2 L, ∇_η1 L, ∇_η2 L, versions of the
# two ∇_θ tensors when recorded).
_RECORDED: dict[int, tuple] = {}


class _NaturalMoments(torch.autograd.Function):
    r"""``(θ1, θ2) -> (m, S, log det S)`` from one Cholesky of ``P = −2 θ2``, closed-form backward.

    With upstream gradients ``(ḡ_m, ḡ_S, ḡ_ld)`` and ``G = sym(ḡ_S)`` the gradient in the
    expectation parameters ``η = (m, S + m mᵀ)`` needs no inverse at all:

        ∇_η2 L = G + ḡ_ld P,      ∇_η1 L = ḡ_m − 2 G m − 2 ḡ_ld θ1

    (``log det S = −log det P`` and ``P = −2 θ2`` is exact), and the gradient in θ is
    ``∇_θ = F_θ ∇_η``: ``∇_θ1 = S ḡ_m``, ``∇_θ2 = a mᵀ + m aᵀ + 2 S G S + 2 ḡ_ld S`` with
    ``a = S ḡ_m``. ``∇_η L`` is the natural gradient in :class:`Natural` coordinates, so the
    backward pass records it (:func:`recorded_expectation_gradient`) for the optimiser, which
    then needs no second natural→mean map of the same θ.
    """

    @classmethod
    def apply(cls, theta1: Tensor, theta2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # torch's Function.apply binds the arguments with inspect.signature at every call when
        # setup_context is defined (~40 µs); that binding only matters for keyword or default
        # arguments, which forward has none of. Under functorch transforms torch's own apply.
        take = torch.is_grad_enabled() and (theta1.requires_grad or theta2.requires_grad)
        if torch._C._are_functorch_transforms_active():
            return super().apply(theta1, theta2, take)
        args = torch._functorch.utils.unwrap_dead_wrappers((theta1, theta2))
        return super(torch.autograd.Function, cls).apply(*args, take)

    @staticmethod
    def forward(theta1: Tensor, theta2: Tensor, take: bool) -> tuple[Tensor, Tensor, Tensor]:
        return natural_moments(theta1, theta2, take)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        theta1, theta2, _ = inputs
        m, S, _ = output
        ctx.save_for_backward(theta1, theta2, m, S)
        ctx.refs = version_refs(theta1, theta2)
        ctx.set_materialize_grads(False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_m: Tensor | None, g_S: Tensor | None, g_ld: Tensor | None):
        theta1, theta2, m, S = ctx.saved_tensors
        grad1, grad2, eta1, eta2 = natural_moments_backward(theta1, theta2, m, S, g_m, g_S, g_ld)
        record_expectation_gradient(ctx.refs, grad1, grad2, eta1, eta2)
        return grad1, grad2, None


def natural_moments(theta1: Tensor, theta2: Tensor, take: bool = True
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """``(m, S, log det S)`` of natural parameters, no autograd (:class:`_NaturalMoments`'
    forward pass; in_domain's factor when it factorised this very q — ``take`` it for a pass
    that takes gradients, else leave it for the next one)."""
    L_P, S, m = _natural_moments(theta1, theta2, take)
    return m, S, L_P.diagonal(dim1=-2, dim2=-1).log().sum(-1).mul_(-2.0)


def natural_moments_backward(
    theta1: Tensor, theta2: Tensor, m: Tensor, S: Tensor,
    g_m: Tensor | None, g_S: Tensor | None, g_ld: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(∇_θ1 L, ∇_θ2 L, ∇_η1 L, ∇_η2 L)`` from the gradients ``(ḡ_m, ḡ_S, ḡ_ld)`` of
    ``(m, S, log det S)`` (:class:`_NaturalMoments`' formulas; ``None`` means zero)."""
    if g_m is None:
        g_m = torch.zeros_like(m)
    if g_ld is None:
        g_ld = torch.zeros(m.shape[:-1], dtype=m.dtype, device=m.device)
    flat = m.dim() == 1  # an unbatched q: vector products, no broadcasting views
    ld = g_ld if flat else g_ld[..., None, None]
    a = torch.mv(S, g_m) if flat else (S @ g_m.unsqueeze(-1)).squeeze(-1)  # S ḡ_m
    T = torch.outer(a, m) if flat else a.unsqueeze(-1) * m.unsqueeze(-2)  # a mᵀ
    ld1 = g_ld if flat else g_ld.unsqueeze(-1)
    if g_S is None:
        eta1 = g_m.addcmul(theta1, ld1, value=-2.0)
        eta2 = (theta2 + theta2.mT).mul_(-ld)  # ḡ_ld P
    else:
        G = symmetrize(g_S)
        SG = S @ G
        T = torch.addmm(T, SG, S) if flat else (
            torch.baddbmm(T, SG, S) if T.dim() == 3 else SG @ S + T)
        Gm = torch.mv(G, m) if flat else (G @ m.unsqueeze(-1)).squeeze(-1)
        eta1 = torch.add(g_m, Gm, alpha=-2.0).addcmul_(theta1, ld1, value=-2.0)
        eta2 = torch.addcmul(G, theta2 + theta2.mT, -ld)  # G + ḡ_ld P
    # T + Tᵀ = a mᵀ + m aᵀ + 2 sym(S G S), symmetric bit for bit; then + 2 ḡ_ld S
    grad2 = (T + T.mT).addcmul_(S, ld, value=2.0)
    return tuple(g if g.shape == t.shape else g.expand_as(t) for g, t in (
        (a, theta1), (grad2, theta2), (eta1, theta1), (eta2, theta2)))


def version_refs(theta1: Tensor, theta2: Tensor) -> tuple | None:
    """What :func:`recorded_expectation_gradient` later checks θ against: weak references and
    version counters (``None`` where there are none, e.g. functorch-wrapped tensors)."""
    try:
        return weakref.ref(theta1), weakref.ref(theta2), theta1._version, theta2._version
    except (RuntimeError, TypeError):
        return None


def record_expectation_gradient(refs: tuple | None, *grads: Tensor) -> None:
    """Record ``(∇_θ1, ∇_θ2, ∇_η1, ∇_η2)`` of the backward pass at the θ of ``refs``. ``∇_θ`` is
    handed to autograd as it is: if ``.grad`` takes it over and a later pass accumulates into
    it, its version counter moves and the record no longer matches."""
    if refs is None:
        return
    for key in [k for k, rec in _RECORDED.items() if rec[0]() is None or rec[1]() is None]:
        del _RECORDED[key]
    theta1 = refs[0]()
    if theta1 is not None:
        grad1, grad2 = grads[:2]
        _RECORDED[id(theta1)] = (*refs, *grads, grad1._version, grad2._version)


def recorded_expectation_gradient(
    theta1: Tensor, theta2: Tensor, grad1: Tensor, grad2: Tensor
) -> tuple[Tensor, Tensor] | None:
    """``∇_η L`` recorded by the last backward pass through :meth:`Natural.to_moments` at
    exactly these tensors, or ``None``.

    Returned only when ``θ1, θ2`` are the very tensors of that forward pass, unchanged since
    (same version counters), and ``(grad1, grad2)`` equal the gradient that backward produced
    bit for bit — that is, the whole gradient came through that one evaluation. Anything else
    (accumulated gradients, another path to θ, a modified θ) returns ``None`` and the caller
    takes the autodiff route.
    """
    rec = _RECORDED.get(id(theta1))
    if rec is None or rec[0]() is not theta1 or rec[1]() is not theta2:
        return None
    if (theta1._version, theta2._version) != rec[2:4]:
        return None
    if grad1 is None or grad2 is None:
        return None
    if (rec[4]._version, rec[5]._version) != rec[8:10]:
        return None  # what backward handed to autograd was written to since
    if not (torch.equal(grad1, rec[4]) and torch.equal(grad2, rec[5])):
        return None
    return rec[6], rec[7]  # (∇_η2 L is symmetric by construction: G and θ2 + θ2ᵀ are)
