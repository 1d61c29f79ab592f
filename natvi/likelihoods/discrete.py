"""Likelihoods for binary and count data: Bernoulli (probit or logit link) and Poisson (exp link)."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from natvi._validation import check_finite
from natvi.likelihoods.base import Likelihood

__all__ = ["Bernoulli", "Poisson", "class_labels"]


def class_labels(y: Any, what: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """``(labels [N], classes [C])`` of raw class labels; ``ValueError`` naming ``what`` for a
    NaN label or fewer than two classes."""
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise ValueError(f"{what} must be one label per row ([N]); got shape {labels.shape}.")
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise ValueError(f"{what} holds a NaN or infinite label; drop unlabelled rows first.")
    classes = np.unique(labels.astype(str)) if labels.dtype == object else np.unique(labels)
    if len(classes) < 2:
        first = classes[0].item() if len(classes) else None
        raise ValueError(
            f"{what} holds a single class ({first!r}): with only one class there is nothing to "
            "classify; a classifier needs at least two classes, so check the labels."
        )
    return labels, classes

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT_HALF = math.sqrt(0.5)
_LOG_2 = math.log(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
# Down to these t, log(erfc(−t/√2)) − log 2 agrees with torch's log_ndtr to a few units in the
# last place (4.8e-16 relative in float64) and so do its autodiff derivatives up to the second,
# whose exp(−t²) terms would underflow further out (erfc itself turns subnormal near
# t = −37.5 in float64 and −13.2 in float32); beyond them torch's log_ndtr takes over.
_TAIL = {torch.float64: -26.0, torch.float32: -9.0}


@lru_cache(maxsize=64)
def _probit_grid(w: Tensor, z: Tensor, wz: Tensor) -> tuple[Tensor, float, Tensor]:
    """For the fused probit sums on a Gauss–Hermite grid ``(z, w, [w; w z])``: ``−log 2 Σ_k w_k``
    (a 0-d tensor), ``max_k |z_k|`` and ``−(2/√π) [w; w z]``, once per grid (the grid tensors
    are cached themselves; tensors hash by identity, so the key is those very tensors)."""
    return w.sum() * -_LOG_2, float(z.abs().max()), wz * (-2.0 / math.sqrt(math.pi))


def ndtr(t: Tensor) -> Tensor:
    """``Φ(t) = ½ erfc(−t/√2)``, accurate to a relative 1e-12 also far in the lower tail
    (``torch.special.ndtr`` loses relative accuracy there: 4 % at ``t = −8``, and it returns 0
    below ``t ≈ −8.3`` where Φ is still ~1e-17)."""
    return 0.5 * torch.special.erfc(t * -_SQRT_HALF)


def log_ndtr(t: Tensor) -> Tensor:
    """``log Φ(t)``: ``log(erfc(−t/√2)) − log 2`` down to the dtype's tail threshold (accurate
    there, and ~15× cheaper than torch's ``log_ndtr``, which goes through ``erfcx`` everywhere)
    and ``torch.special.log_ndtr`` beyond it (on those entries only, and only when ``t`` has
    any: one reduction decides)."""
    cut = _TAIL.get(t.dtype, -5.0)
    out = torch.special.erfc(t.clamp_min(cut).mul_(-_SQRT_HALF)).log_().sub_(_LOG_2)
    if t.numel() and float(t.detach().min()) < cut:
        tail = t < cut
        out = out.masked_scatter(tail, torch.special.log_ndtr(t[tail]))
    return out


class Bernoulli(Likelihood):
    """``y ∈ {0, 1}``, ``p(y = 1 | f) = Φ(f)`` (``link="probit"``, GPyTorch's choice) or
    ``sigmoid(f)`` (``link="logit"``).

    Variational expectations by Gauss–Hermite quadrature (20 points by default, like GPyTorch),
    fused: the backward pass comes from the analytic derivatives of ``log p``;
    predictions in closed form for the probit link: ``p(y = 1) = Φ(μ / sqrt(1 + v))``.

    Example:
        >>> lik = Bernoulli(link="logit")
    """

    task = "binary"

    def __init__(self, link: str = "probit", num_gh: int = 20) -> None:
        super().__init__(num_gh)
        if link not in ("probit", "logit"):
            raise ValueError(f"link must be 'probit' or 'logit'; got {link!r}.")
        self.link = link

    @classmethod
    def check_targets(
        cls, y: Any, what: str = "y", suggest: str = "the {} likelihood"
    ) -> np.ndarray:
        """Class labels ``y [N]`` of exactly two classes (any labels: strings, ±1, 0/1, ...)."""
        labels, classes = class_labels(y, what)
        if len(classes) != 2:
            raise ValueError(
                f"{what} has {len(classes)} classes but the bernoulli likelihood takes two; "
                f"use {suggest.format('softmax')}."
            )
        return labels

    def check_y(self, y: Tensor) -> Tensor:
        # y holds only 0 and 1 exactly when it equals its own indicator y ≠ 0 (a NaN or an
        # infinity does not): one comparison for both checks on the per-step path
        if not (torch.is_tensor(y) and torch.equal(y, y.ne(0).to(y.dtype))):
            check_finite("y", y)
            bad = y[(y != 0) & (y != 1)][0]
            raise ValueError(
                f"y must contain only 0 and 1 for the Bernoulli likelihood; found {float(bad):g}. "
                "Encode the two classes as 0/1 (e.g. (y > 0).to(dtype) for ±1 labels)."
            )
        return y

    def _log_cdf(self, z: Tensor) -> Tensor:
        if self.link == "probit":
            return log_ndtr(z)
        return -torch.nn.functional.softplus(-z)

    def log_prob(self, F: Tensor, y: Tensor) -> Tensor:
        return self._log_cdf((2.0 * y - 1.0) * F)

    def log_prob_derivatives(
        self, F: Tensor, y: Tensor, second: bool = False
    ) -> tuple[Tensor, ...]:
        """With ``s = 2y − 1`` and ``t = sF``: probit ``log Φ(t)``, ``s r``, ``−r (t + r)`` where
        ``r = φ(t)/Φ(t)``; logit ``log σ(t)``, ``s σ(−t)``, ``−σ(t) σ(−t)``."""
        s = 2.0 * y - 1.0
        t = s * F
        if self.link == "probit":
            lp = log_ndtr(t)
            r = torch.addcmul(lp, t, t, value=0.5).add_(_HALF_LOG_2PI).neg_().exp_()  # φ/Φ
            out = (lp, s * r)
            return out + (-r * (t + r),) if second else out
        lp = -torch.nn.functional.softplus(-t)
        sig_neg = torch.sigmoid(-t)
        out = (lp, s * sig_neg)
        return out + (-sig_neg * (1.0 - sig_neg),) if second else out

    def _gauss_hermite_sums(
        self, f_mean: Tensor, sd: Tensor, y: Tensor, z: Tensor, w: Tensor, wz: Tensor, grad: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Probit: the grid holds ``u = −t/√2`` (``t = s F``, ``s = 2y − 1``), formed by one
        outer product with the sign and scale folded into the ``[N]`` vectors, so that

            log Φ(t) = log erfc(u) − log 2,     ∂_f log p = s φ(t)/Φ(t) = s √(2/π) e^{−u² − log erfc(u)}

        cost ``erfc``, ``log``, one ``addcmul`` and ``exp`` on the ``[K, N]`` grid; the constants
        and the sign are applied after the reductions. Outside ``log_ndtr``'s erfc range (a
        grid point with ``t`` below the dtype's tail threshold) the generic path is taken."""
        if self.link != "probit":
            return super()._gauss_hermite_sums(f_mean, sd, y, z, w, wz, grad)
        log_half, z_abs, wz_k = _probit_grid(w, z, wz)
        c = y.mul(-2.0 * _SQRT_HALF).add_(_SQRT_HALF)  # −s/√2 = √½ − √2 y, [N]
        cf = c * f_mean
        # (the grid's largest u, bounded per datum by cf + max|z| sd/√2: no pass over [K, N])
        if cf.numel() and float(torch.add(cf, sd, alpha=z_abs * _SQRT_HALF).max()) > (
                _TAIL.get(cf.dtype, -5.0) * -_SQRT_HALF):
            return super()._gauss_hermite_sums(f_mean, sd, y, z, w, wz, grad)
        u = torch.addr(cf, z, c * sd)  # −t/√2, [K, N]
        log_erfc = torch.special.erfc(u).log_()
        value = torch.addmv(log_half, log_erfc.mT, w)  # Σ_k w_k (log erfc(u_k) − log 2)
        if not grad:
            return value, None, None
        e = torch.addcmul(log_erfc, u, u).neg_().exp_()  # e^{−u²} / erfc(u)
        # s √(2/π) Σ_k [w_k; w_k z_k] e_k, with s √(2/π) = c · (−2/√π) folded into the weights
        g_mean, g_var = (wz_k @ e).mul_(c)
        return value, g_mean, g_var

    def conditional_mean(self, F: Tensor) -> Tensor:
        return ndtr(F) if self.link == "probit" else torch.sigmoid(F)

    def conditional_variance(self, F: Tensor) -> Tensor:
        p = self.conditional_mean(F)
        return p * (1 - p)

    def _predict_mean_and_var(self, f_mean: Tensor, f_var: Tensor) -> tuple[Tensor, Tensor]:
        if self.link == "probit":
            p = ndtr(f_mean / torch.sqrt(1.0 + f_var))
        else:
            p = super()._predict_mean_and_var(f_mean, f_var)[0]
        return p, p * (1 - p)

    def _predict_log_density(self, f_mean: Tensor, f_var: Tensor, y: Tensor) -> Tensor:
        if self.link == "probit":
            return torch.special.log_ndtr((2.0 * y - 1.0) * f_mean / torch.sqrt(1.0 + f_var))
        return super()._predict_log_density(f_mean, f_var, y)

    def extra_repr(self) -> str:
        return f"link={self.link!r}, num_gh={self.num_gh}"


class Poisson(Likelihood):
    """Counts ``y ∈ {0, 1, 2, ...}``, ``y | f ~ Poisson(exp(f))``. Closed forms:

    ``E[log p] = y μ − exp(μ + v/2) − log y!``; ``E[y] = exp(μ + v/2)``,
    ``Var[y] = E[y] + (exp(v) − 1) exp(2μ + v)``.
    """

    task = "counts"

    @classmethod
    def _check_support(cls, y: Tensor, what: str, suggest: str) -> None:
        if not bool(((y >= 0) & (y == torch.round(y))).all()):
            bad = y[(y < 0) | (y != torch.round(y))][0]
            raise ValueError(
                f"{what} holds {float(bad):g}, but the Poisson likelihood takes non-negative "
                f"integer counts; for real-valued targets use {suggest.format('gaussian')}."
            )

    def log_prob(self, F: Tensor, y: Tensor) -> Tensor:
        return y * F - torch.exp(F) - torch.lgamma(y + 1.0)

    def conditional_mean(self, F: Tensor) -> Tensor:
        return torch.exp(F)

    def conditional_variance(self, F: Tensor) -> Tensor:
        return torch.exp(F)

    def _variational_expectations(self, f_mean: Tensor, f_var: Tensor, y: Tensor) -> Tensor:
        return self.expectation_terms(f_mean, f_var, y, False)[0]

    def expectation_terms(self, f_mean: Tensor, f_var: Tensor, y: Tensor, grad: bool):
        # E[log p] = y μ − e^{μ + v/2} − log y!:  ∂/∂μ = y − e^{μ + v/2},  ∂/∂v = −½ e^{μ + v/2}
        rate = torch.exp(f_mean + 0.5 * f_var)
        value = y * f_mean - rate - torch.lgamma(y + 1.0)
        if not grad:
            return value, None, None
        return value, y - rate, -0.5 * rate

    def _predict_mean_and_var(self, f_mean: Tensor, f_var: Tensor) -> tuple[Tensor, Tensor]:
        rate = torch.exp(f_mean + 0.5 * f_var)
        return rate, rate + torch.expm1(f_var) * rate**2
