r"""The whole ELBO of an SVGP in natural coordinates, under a fixed prior, as one autograd node.

When only ``q`` takes a gradient — kernel, inducing inputs, mean function and likelihood fixed,
so the prior's factor and the solved block ``Aᵀ = (L_zz⁻¹ K_zx)ᵀ`` are kept
(:mod:`natvi.gp.base`) — the ELBO is a function of ``θ = (θ1, θ2)`` alone:

    (m, S, log det S) = moments(θ)                    (one Cholesky of −2 θ2, or in_domain's)
    (m̃, S̃) = (m, S) whitened, or (L_zz⁻¹ m, L_zz⁻¹ S L_zz⁻ᵀ) for a q over u (whiten_q)
    μ = Aᵀ m̃ + μ_prior(X),   v = k(x, x) + colsum(A ∘ (S̃ − I) A)
    ELBO = s Σ_n E_{N(μ_n, v_n)}[log p(y_n | f)] − KL(N(m̃, S̃) ‖ N(0, I))     (s = N / B)

and its reverse mode is the chain of the closed forms natvi already uses node by node — the
likelihood's ``(∂/∂μ, ∂/∂v)`` (:meth:`~natvi.likelihoods.Likelihood.expectation_terms`), the
marginals' (:func:`~natvi.gp.conditionals.marginals_backward`), the whitening's
(:func:`~natvi.gp.conditionals.unwhiten_gradient`), the moments'
(:func:`natvi._moments.natural_moments_backward`, which also records ``∇_η L`` for the natural
step) — run here without an autograd graph between them: one node instead of three custom
nodes and a dozen built-in ones. Same formulas, same order of operations; tested against the
node-by-node path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from natvi._moments import (
    natural_moments,
    natural_moments_backward,
    record_expectation_gradient,
    version_refs,
)
from natvi.gp.conditionals import (
    marginals_backward,
    marginals_forward,
    unwhiten_gradient,
    whiten_q,
    whitened_kl,
)
from natvi.likelihoods.base import Likelihood

__all__ = ["fused_elbo"]

_NEEDS = (False, False, True, True, True)  # (L, K, m̃, S̃, log det S̃): q's moments only


class _FusedElbo(torch.autograd.Function):
    """``(θ1 [M], θ2 [M, M]) -> ELBO`` (module docstring); everything else is a constant."""

    @staticmethod
    def forward(ctx, theta1: Tensor, theta2: Tensor, A_t: Tensor, kxx: Tensor,
                prior_mean: Tensor | None, likelihood: Likelihood, y: Tensor,
                scale: float | None, L_zz: Tensor | None) -> Tensor:
        grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        m, S, logdet = natural_moments(theta1, theta2)
        m_t, S_t, logdet_t = (m, S, logdet) if L_zz is None else whiten_q(
            m, S, L_zz, False, logdet)
        mean, var, D = marginals_forward(A_t, m_t, S_t, False)
        kl = whitened_kl(m_t, S_t, logdet_t, False)
        f_mean = mean if prior_mean is None else mean + prior_mean
        value, g_mean, g_var = likelihood.expectation_terms(f_mean, kxx + var, y, grad)
        total = value.sum()
        if grad:
            ctx.save_for_backward(theta1, theta2, A_t, m, S, m_t, D, g_mean, g_var, L_zz)
            ctx.refs = version_refs(theta1, theta2)
            ctx.scale = scale
            ctx.logdet_shape = logdet.shape
        return (total if scale is None else scale * total) - kl

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:
        theta1, theta2, A_t, m, S, m_t, D, g_mean, g_var, L_zz = ctx.saved_tensors
        g_ve = g if ctx.scale is None else g * ctx.scale
        _, _, m_bar, S_bar, ld_bar = marginals_backward(
            None, A_t, m_t, D, g_ve * g_mean, g_ve * g_var, -g, False, _NEEDS, ctx.logdet_shape)
        if L_zz is not None:
            m_bar, S_bar = unwhiten_gradient(L_zz, m_bar, S_bar)
        grad1, grad2, eta1, eta2 = natural_moments_backward(
            theta1, theta2, m, S, m_bar, S_bar, ld_bar)
        record_expectation_gradient(ctx.refs, grad1, grad2, eta1, eta2)
        return grad1, grad2, None, None, None, None, None, None, None


def fused_elbo(theta1: Tensor, theta2: Tensor, A_t: Tensor, kxx: Tensor,
               prior_mean: Tensor | None, likelihood: Likelihood, y: Tensor,
               scale: float | None, L_zz: Tensor | None = None) -> Tensor:
    """The ELBO (a scalar) from q's natural parameters ``θ1 [M]``, ``θ2 [M, M]``, the kept
    ``Aᵀ [N, M]`` and ``k(x, x) [N]``, the prior mean at the inputs ``[N]`` (``None``: zero),
    labels ``y [N]``, the likelihood's scale ``N / B`` (``None``: 1) and, for a q over ``u``
    (not whitened), the kept ``L_zz`` (q is whitened inside, :func:`whiten_q`); differentiable
    in θ (module docstring). The likelihood must have :attr:`~Likelihood.has_expectation_terms`.
    """
    return _FusedElbo.apply(theta1, theta2, A_t, kxx, prior_mean, likelihood, y, scale, L_zz)
