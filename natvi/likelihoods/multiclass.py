"""Multi-class likelihoods over ``C`` latent functions (``num_latent = C``): Softmax and RobustMax.

Labels are class indices ``y [N]`` in ``{0, ..., C − 1}`` (integer or integer-valued float);
``f_mean``, ``f_var`` are ``[N, C]``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from natvi._validation import check_finite
from natvi.likelihoods.base import Likelihood, gauss_hermite, variance_gradient
from natvi.likelihoods.discrete import class_labels

__all__ = ["Softmax", "RobustMax"]


def _check_classes(y: Tensor, num_classes: int, name: str) -> Tensor:
    check_finite("y", y)
    ok = (y >= 0) & (y < num_classes) & (y == torch.round(y) if y.is_floating_point() else True)
    if not bool(torch.as_tensor(ok).all()):
        bad = y[~ok][0]
        raise ValueError(
            f"y must hold class indices in {{0, ..., {num_classes - 1}}} for the {name} likelihood "
            f"with num_classes={num_classes}; found {float(bad):g}. Encode labels as 0..C-1."
        )
    return y.long()


class _MultiClass(Likelihood):
    task = "multiclass"

    @classmethod
    def check_targets(
        cls, y: Any, what: str = "y", suggest: str = "the {} likelihood"
    ) -> np.ndarray:
        """Class labels ``y [N]`` of at least two classes (any labels: strings, integers, ...)."""
        return class_labels(y, what)[0]

    def __init__(self, num_classes: int, num_gh: int) -> None:
        super().__init__(num_gh)
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        self.num_latent = int(num_classes)

    @property
    def num_classes(self) -> int:
        return self.num_latent

    def check_y(self, y: Tensor) -> Tensor:
        return _check_classes(y, self.num_latent, type(self).__name__)

    def predict_mean_and_var(self, f_mean: Tensor, f_var: Tensor) -> tuple[Tensor, Tensor]:
        """Class probabilities ``[N, C]`` and their Bernoulli variances ``p (1 − p)``."""
        self._check_f(f_mean, f_var)
        p = self.predict_proba(f_mean, f_var)
        return p, p * (1 - p)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_latent}, num_gh={self.num_gh}"


# Seeded Monte Carlo draws of Softmax, by (seed, pairs, shape, dtype, device); the last few kept.
_DRAWS: dict[tuple, Tensor] = {}
_DRAWS_KEPT = 4
_DRAWS_MAX_NUMEL = 2**25  # 256 MiB in float64 per kept tensor at most


class _SoftmaxMC(torch.autograd.Function):
    r"""``(μ [N, C], v [N, C], y [N], ε [S, N, C]) -> (1/S) Σ_s log softmax(μ + √v ∘ ε_s)_y``
    with the reverse mode from the softmax probabilities ``p_s`` of the same draws:

        ∂/∂μ = e_y − (1/S) Σ_s p_s,     ∂/∂√v = (1/S) Σ_s (e_y − p_s) ∘ ε_s,     ∂/∂v = ∂/∂√v / (2√v)

    — what autodiff of the samples computes, without keeping or replaying the ``[S, N, C]``
    graph: the forward pass makes the samples, their log-sum-exp and ``p`` in place, and keeps
    two ``[N, C]`` results. At ``v = 0`` the limit ``½ ∂²_f log p(μ) = −½ p(μ)(1 − p(μ))`` is
    used (autodiff would give ``∞ · 0``), and 0 for ``v < 0`` (clamped to 0).
    """

    @staticmethod
    def forward(ctx, f_mean: Tensor, f_var: Tensor, y: Tensor, eps: Tensor) -> Tensor:
        sd = f_var.clamp_min(0).sqrt()
        F = torch.addcmul(f_mean, sd, eps)  # [S, N, C]
        F.sub_(F.amax(-1, keepdim=True))
        F_y = F.gather(-1, y.expand(F.shape[:-1]).unsqueeze(-1))  # [S, N, 1]
        E = F.exp_()
        Z = E.sum(-1, keepdim=True)
        value = (F_y - Z.log()).mean(0).squeeze(-1)
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return value
        P = E.div_(Z)  # softmax probabilities of every draw
        onehot = torch.zeros_like(f_mean).scatter_(-1, y.unsqueeze(-1), 1.0)
        g_mean = onehot - P.mean(0)
        g_sd = onehot * eps.mean(0) - P.mul_(eps).mean(0)

        def at_zero() -> Tensor:  # ½ ∂²_{f_c} log softmax(μ)_y = −½ p_c (1 − p_c)
            p0 = torch.softmax(f_mean, dim=-1)
            return -0.5 * p0 * (1.0 - p0)

        g_var = variance_gradient(g_sd, sd, f_var, at_zero)
        ctx.save_for_backward(g_mean, g_var)
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        g_mean, g_var = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        return grad * g_mean, grad * g_var, None, None


class Softmax(_MultiClass):
    """``p(y = c | f) = exp(f_c) / Σ_j exp(f_j)``.

    Expectations over the ``C``-dimensional ``q(f_n)`` by Monte Carlo with ``num_samples``
    antithetic pairs of standard-normal draws. With ``seed`` an integer, the draws are the same at
    every call (common random numbers: the ELBO is a deterministic, differentiable function of the
    parameters, which step-size back-off needs); ``seed=None`` draws afresh each call (unbiased
    from call to call).
    """

    def __init__(
        self, num_classes: int, num_samples: int = 100, seed: int | None = 0, num_gh: int = 20
    ) -> None:
        super().__init__(num_classes, num_gh)
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples}.")
        self.num_samples = int(num_samples)
        self.seed = seed

    def log_prob(self, F: Tensor, y: Tensor) -> Tensor:
        idx = y.long().expand(F.shape[:-1]).unsqueeze(-1)
        return F.gather(-1, idx).squeeze(-1) - torch.logsumexp(F, dim=-1)

    def _draws(self, num_samples: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """``[2 num_samples, *shape]`` antithetic standard-normal draws (seeded by ``seed``).

        Seeded draws are the same tensor at every call, so they are made once per (seed, size,
        dtype, device) and kept (:data:`_DRAWS`: the last four, each up to 2²⁵ numbers):
        drawing ``[50, 3200, 3]`` normals costs more than the whole rest of a softmax
        expectation. Do not modify them.
        """
        key = None if self.seed is None else (
            int(self.seed), num_samples, tuple(shape), like.dtype, like.device)
        draws = None if key is None else _DRAWS.pop(key, None)
        if draws is None:
            g = None if key is None else torch.Generator(device=like.device).manual_seed(key[0])
            eps = torch.randn(num_samples, *shape, generator=g, dtype=like.dtype,
                              device=like.device)
            draws = torch.cat([eps, -eps], dim=0)
        if key is not None and draws.numel() <= _DRAWS_MAX_NUMEL:  # (huge: drawn each call)
            _DRAWS[key] = draws  # (most recent last)
            while len(_DRAWS) > _DRAWS_KEPT:
                del _DRAWS[next(iter(_DRAWS))]
        return draws

    def _samples(self, f_mean: Tensor, f_var: Tensor) -> Tensor:
        eps = self._draws(self.num_samples, tuple(f_mean.shape), f_mean)
        return f_mean + f_var.clamp_min(0).sqrt() * eps  # [2S, N, C]

    def _variational_expectations(self, f_mean: Tensor, f_var: Tensor, y: Tensor) -> Tensor:
        eps = self._draws(self.num_samples, tuple(f_mean.shape), f_mean)
        return _SoftmaxMC.apply(f_mean, f_var, y.long(), eps)

    def monte_carlo_expectations(self, f_mean: Tensor, f_var: Tensor, y: Tensor) -> Tensor:
        """The same Monte Carlo expectation by autodiff of :meth:`log_prob` on the samples (the
        reference the fused path is tested against)."""
        return self.log_prob(self._samples(f_mean, f_var), y).mean(0)

    def _predict_log_density(self, f_mean: Tensor, f_var: Tensor, y: Tensor) -> Tensor:
        lp = self.log_prob(self._samples(f_mean, f_var), y)
        return torch.logsumexp(lp, dim=0) - math.log(lp.shape[0])

    def predict_proba(self, f_mean: Tensor, f_var: Tensor, num_samples: int = 500) -> Tensor:
        """``E_q[softmax(f)]`` ``[N, C]`` by Monte Carlo with ``num_samples`` antithetic pairs of
        ``C``-dimensional draws shared by every row (seeded by ``seed``), so that a row's
        probabilities do not depend on the other rows of the batch. Predictions are cheap next to
        training, hence more draws than the ELBO's ``num_samples`` by default."""
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples}.")
        eps = self._draws(int(num_samples), (1, self.num_latent), f_mean)  # [2S, 1, C]
        return torch.softmax(f_mean + f_var.clamp_min(0).sqrt() * eps, dim=-1).mean(0)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_latent}, num_samples={self.num_samples}, seed={self.seed}"


class RobustMax(_MultiClass):
    """``p(y = c | f) = 1 − ε`` if ``c = argmax f`` else ``ε / (C − 1)`` (Hernández-Lobato et al.).

    ``ε`` (``epsilon``) is fixed. The expectation needs only ``P_c = P(f_c ≥ f_j ∀ j)``, a 1-D
    integral done by Gauss–Hermite: ``P_c = E_{f_c}[Π_{j≠c} Φ((f_c − μ_j)/sqrt(v_j))]``, so
    ``E[log p(y|f)] = P_y log(1 − ε) + (1 − P_y) log(ε/(C − 1))``. The integrand is a product of
    normal CDFs, sharper than a polynomial, hence 60 points by default (``Σ_c P_c = 1`` to about
    1e-6 for latent variances down to 0.05).
    """

    def __init__(self, num_classes: int, epsilon: float = 1e-3, num_gh: int = 60) -> None:
        super().__init__(num_classes, num_gh)
        if not 0.0 < float(epsilon) < 1.0:
            raise ValueError(f"epsilon must lie in (0, 1), got {epsilon}.")
        self.epsilon = float(epsilon)

    def _logs(self) -> tuple[float, float]:
        return math.log1p(-self.epsilon), math.log(self.epsilon / (self.num_latent - 1))

    def log_prob(self, F: Tensor, y: Tensor) -> Tensor:
        hit, miss = self._logs()
        is_max = F.argmax(dim=-1) == y.long()
        return torch.where(is_max, hit, miss).to(F.dtype)

    def prob_max(self, f_mean: Tensor, f_var: Tensor, c: Tensor | None = None) -> Tensor:
        """``P(f_c ≥ f_j ∀ j)`` per datum for class ``c [N]`` (``[N]``), or for every class ``[N, C]``."""
        z, w = gauss_hermite(self.num_gh, 1, dtype=f_mean.dtype, device=f_mean.device)
        sd = f_var.clamp_min(1e-300).sqrt()  # [N, C]
        if c is None:
            mu_c, sd_c = f_mean, sd  # [N, C]
        else:
            mu_c = f_mean.gather(-1, c.unsqueeze(-1))  # [N, 1]
            sd_c = sd.gather(-1, c.unsqueeze(-1))
        f_c = mu_c.unsqueeze(0) + sd_c.unsqueeze(0) * z.view(-1, 1, 1)  # [K, N, Cc]
        log_phi = torch.special.log_ndtr(
            (f_c.unsqueeze(-1) - f_mean.view(1, f_mean.shape[0], 1, -1)) / sd.unsqueeze(-2)[None]
        )  # [K, N, Cc, C]
        cls = torch.arange(self.num_latent, device=f_mean.device)
        rows = cls if c is None else c.unsqueeze(-1)  # [C] or [N, 1]
        same = rows.unsqueeze(-1) == cls  # [Cc, C] or [N, 1, C]
        log_prod = log_phi.masked_fill(same, 0.0).sum(-1)  # [K, N, Cc]
        P = torch.einsum("k,knc->nc", w, log_prod.exp())
        return P if c is None else P.squeeze(-1)

    def _variational_expectations(self, f_mean: Tensor, f_var: Tensor, y: Tensor) -> Tensor:
        hit, miss = self._logs()
        P = self.prob_max(f_mean, f_var, y)
        return P * hit + (1 - P) * miss

    def predict_proba(self, f_mean: Tensor, f_var: Tensor) -> Tensor:
        """``p(y = c) = (1 − ε) P_c + ε/(C − 1) (1 − P_c)``, ``[N, C]``."""
        P = self.prob_max(f_mean, f_var)
        eps = self.epsilon
        return (1 - eps) * P + eps / (self.num_latent - 1) * (1 - P)

    def _predict_log_density(self, f_mean: Tensor, f_var: Tensor, y: Tensor) -> Tensor:
        return self.predict_proba(f_mean, f_var).gather(-1, y.unsqueeze(-1)).squeeze(-1).log()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_latent}, epsilon={self.epsilon}, num_gh={self.num_gh}"
