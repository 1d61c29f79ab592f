"""The joint naive-Bayes family over a class and discrete features — the dually flat manifold
behind multinomial logistic regression (MLR).

A class ``y ∈ {1..s}`` and features ``x_i ∈ {1..r_i}``, ``i = 1..m``, with
``p(y, x) = p(y) ∏_i p(x_i | y)``. In minimal coordinates (last class and last value of each
feature are references) this is the exponential family

    p(y, x) ∝ exp(θ_y + Σ_i θ_{y,i,x_i}),   θ_s = 0,  θ_{y,i,r_i} = 0,

with parameters ``θ = (θ_y [..., s−1], θ_x [..., s, D])``, ``D = Σ_i (r_i − 1)``; column
``c`` of ``θ_x`` is one (feature ``i``, value ``v < r_i``) pair, features in order, values in
order. Sufficient statistics are ``[y = k]`` (``k < s``) and ``[y = k, x_i = v]``, so the mean
parameters are ``μ = (p(y) [..., s−1], p(y, x_i = v) [..., s, D])``;
``A(θ) = log Σ_y exp(θ_y + Σ_i log(1 + Σ_{v<r_i} e^{θ_{y,i,v}}))``.

Inverse map (with ``n_y = p(y)`` for all ``y`` and ``n_{y,i} = p(y, x_i = r_i)``, the
reference cells, ``n_{y,i} = n_y − Σ_{v<r_i} μ_{y,i,v}``):

    θ_{y,i,v} = log μ_{y,i,v} − log n_{y,i},
    θ_y = (1 − m)(log n_y − log n_s) + Σ_i (log n_{y,i} − log n_{s,i}).

The natural gradient ``∇_μ L = (∂θ/∂μ)ᵀ ∇_θ L`` is this map's transposed Jacobian applied by
hand (:meth:`NaiveBayes.natural_gradient_at_mean`): ``O(s D)``, no matrix.

**MLR as the conditional.** ``p(y | x) ∝ exp(β_y + Σ_i W_{y,i,x_i})`` with the last class as
reference and ``β = θ_y``, ``W = θ_x[:s−1] − θ_x[s−1]`` ``[..., s−1, D]``: the MLR parameters are
a linear map ``L θ`` of the joint natural parameters (:meth:`NaiveBayes.conditional`); the
remaining coordinates, ``θ_x[s−1]``, only move the feature marginal. A loss of the conditional
lifts to the joint through ``Lᵀ`` (:meth:`NaiveBayes.lift`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from natvi.expfam._domain import require
from natvi.expfam.base import ExponentialFamily

__all__ = ["NaiveBayes"]

Pair = tuple[Tensor, Tensor]


class NaiveBayes(ExponentialFamily):
    """Joint naive-Bayes family over ``n_classes`` classes and features of ``cardinalities``.

    Args:
        n_classes: number of classes ``s ≥ 2``.
        cardinalities: ``(r_1, …, r_m)``, each ``≥ 2``.

    Example:
        >>> fam = NaiveBayes(3, [4, 2])                 # θ = ([2], [3, 4]) ; D = 3 + 1
        >>> theta = (torch.zeros(2), torch.zeros(3, 4))  # uniform joint
        >>> p_y, p_yx = fam.to_mean(theta)               # 1/3 and 1/12, 1/6
    """

    def __init__(self, n_classes: int, cardinalities: Sequence[int]) -> None:
        if int(n_classes) < 2:
            raise ValueError(f"NaiveBayes: n_classes must be at least 2, got {n_classes!r}.")
        cards = [int(r) for r in cardinalities]
        if not cards or min(cards) < 2:
            raise ValueError(
                "NaiveBayes: cardinalities must be a non-empty list of integers ≥ 2 (a feature "
                f"with one value carries no information; drop it); got {list(cardinalities)!r}."
            )
        self.n_classes = int(n_classes)
        self.cardinalities = tuple(cards)
        self.n_features = len(cards)
        self.n_columns = sum(r - 1 for r in cards)
        self.offsets = torch.tensor([0] + [r - 1 for r in cards[:-1]]).cumsum(0)
        self.feature_of_column = torch.repeat_interleave(
            torch.arange(len(cards)), torch.tensor(cards) - 1
        )
        r_max = max(cards)
        # (feature, value) -> column of [θ_x, 0, −∞]: the reference value reads the 0, padding −∞.
        gather = torch.full((len(cards), r_max), self.n_columns + 1, dtype=torch.long)
        for i, (off, r) in enumerate(zip(self.offsets.tolist(), cards)):
            gather[i, : r - 1] = torch.arange(off, off + r - 1)
            gather[i, r - 1] = self.n_columns
        self._gather = gather

    @property
    def num_params(self) -> int:
        """``(s − 1) + s D`` joint parameters."""
        return self.n_classes - 1 + self.n_classes * self.n_columns

    def _segment_sum(self, x: Tensor) -> Tensor:
        """Sum the columns ``[..., D]`` of each feature: ``[..., m]``."""
        idx = self.feature_of_column.to(x.device)
        out = x.new_zeros(*x.shape[:-1], self.n_features)
        return out.index_add(-1, idx, x)

    def _check_shapes(self, name: str, pair: Pair) -> None:
        a, b = pair
        s, D = self.n_classes, self.n_columns
        if a.shape[-1:] != (s - 1,) or b.shape[-2:] != (s, D) or a.shape[:-1] != b.shape[:-2]:
            raise ValueError(
                f"NaiveBayes: {name} must be a pair with shapes [..., {s - 1}] and "
                f"[..., {s}, {D}] (s − 1 classes; s × Σ(r_i − 1) class–feature cells); got "
                f"{tuple(a.shape)} and {tuple(b.shape)}."
            )

    def _log_norms(self, theta_x: Tensor) -> Tensor:
        """``log(1 + Σ_{v<r_i} e^{θ_{y,i,v}})`` per class and feature ``[..., s, m]``."""
        ref = theta_x.new_zeros(*theta_x.shape[:-1], 1)
        pad = torch.full_like(ref, float("-inf"))
        ext = torch.cat([theta_x, ref, pad], -1)
        return torch.logsumexp(ext[..., self._gather.to(theta_x.device)], -1)

    def _class_logits(self, theta: Pair) -> tuple[Tensor, Tensor]:
        theta_y, theta_x = theta
        lognorm = self._log_norms(theta_x)
        logits = torch.cat([theta_y, theta_y.new_zeros(*theta_y.shape[:-1], 1)], -1)
        return logits + lognorm.sum(-1), lognorm

    def log_partition(self, theta: Pair) -> Tensor:
        return torch.logsumexp(self._class_logits(theta)[0], -1)

    def to_mean(self, theta: Pair) -> Pair:
        self._check_shapes("theta", theta)
        logits, lognorm = self._class_logits(theta)
        p_y = torch.softmax(logits, -1)
        idx = self.feature_of_column.to(lognorm.device)
        p_x_given_y = torch.exp(theta[1] - lognorm[..., idx])
        return p_y[..., :-1], p_y.unsqueeze(-1) * p_x_given_y

    def _reference_cells(self, mu: Pair) -> tuple[Tensor, Tensor]:
        mu_y, mu_x = mu
        self._check_shapes("mu", mu)
        n_y = torch.cat([mu_y, 1.0 - mu_y.sum(-1, keepdim=True)], -1)
        n_ref = n_y.unsqueeze(-1) - self._segment_sum(mu_x)
        ok = (n_y > 0).all(-1) & (n_ref > 0).flatten(-2).all(-1) & (mu_x > 0).flatten(-2).all(-1)
        require(
            ok,
            "mu",
            mu_x,
            "a joint distribution with every cell probability positive",
            "NaiveBayes",
        )
        return n_y, n_ref

    def to_natural(self, mu: Pair) -> Pair:
        n_y, n_ref = self._reference_cells(mu)
        idx = self.feature_of_column.to(n_y.device)
        theta_x = torch.log(mu[1]) - torch.log(n_ref)[..., idx]
        log_n, log_ref = torch.log(n_y), torch.log(n_ref).sum(-1)
        m = self.n_features
        theta_y = (
            (1 - m) * (log_n[..., :-1] - log_n[..., -1:]) + log_ref[..., :-1] - log_ref[..., -1:]
        )
        return theta_y, theta_x

    def natural_gradient(self, theta: Pair, grad_theta: Pair) -> Pair:
        return self.natural_gradient_at_mean(self.to_mean(theta), grad_theta)

    def natural_gradient_at_mean(self, mu: Pair, grad_theta: Pair) -> Pair:
        """``F⁻¹ ∇_θ L = (∂θ/∂μ)ᵀ ∇_θ L`` with the Fisher taken at the mean parameters ``mu``.

        ``O(s D)``: with ``G = (g_y, −Σ g_y)``, the cotangents of ``n_{y,i,v}``, ``n_{y,i}``,
        ``n_y`` are ``g_x / μ_x``, ``(G_y − Σ_{v} g_{y,i,v}) / n_{y,i}``, ``(1 − m) G_y / n_y``;
        then ``∇_{μ_x} = g_x / μ_x − h_{y,i}`` and ``∇_{μ_y} = H_y − H_s`` with
        ``H_y = (1 − m) G_y / n_y + Σ_i h_{y,i}``.
        """
        self._check_shapes("grad_theta", grad_theta)
        n_y, n_ref = self._reference_cells(mu)
        g_y, g_x = grad_theta
        G = torch.cat([g_y, -g_y.sum(-1, keepdim=True)], -1)
        h_ref = (G.unsqueeze(-1) - self._segment_sum(g_x)) / n_ref
        idx = self.feature_of_column.to(g_x.device)
        nat_x = g_x / mu[1] - h_ref[..., idx]
        H = (1 - self.n_features) * G / n_y + h_ref.sum(-1)
        return H[..., :-1] - H[..., -1:], nat_x

    def mean_from_counts(self, class_counts: Tensor, cell_counts: Tensor, pseudo: float) -> Pair:
        """Smoothed mean parameters from counts, with ``pseudo`` max-entropy pseudo-counts.

        ``p(y) = (c_y + a) / (N + s a)`` and ``p(y, x_i = v) = (c_{y,i,v} + a / r_i) / (N + s a)``:
        ``a`` pseudo-observations per class spread uniformly over each feature's values, so the
        estimate is a valid joint (consistent marginals) and every cell is positive.

        Args:
            class_counts: ``c_y`` ``[..., s]``.
            cell_counts: ``c_{y,i,v}`` for ``v < r_i`` ``[..., s, D]``.
            pseudo: ``a > 0``.
        """
        s = self.n_classes
        total = class_counts.sum(-1, keepdim=True) + s * pseudo
        r = torch.tensor(self.cardinalities, dtype=cell_counts.dtype, device=cell_counts.device)
        cell_pseudo = pseudo / r[self.feature_of_column.to(cell_counts.device)]
        p_y = (class_counts + pseudo) / total
        return p_y[..., :-1], (cell_counts + cell_pseudo) / total.unsqueeze(-1)

    def one_hot(self, x: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
        """Features ``[..., m]`` (integer values ``0..r_i−1``) as indicators ``[..., D]``.

        Column ``offset_i + v`` is ``[x_i = v]`` for ``v < r_i − 1``; the last value of each
        feature is the reference and has no column. ``O(m)`` per row.
        """
        if x.dtype.is_floating_point or x.shape[-1:] != (self.n_features,):
            raise ValueError(
                f"NaiveBayes: x must be an integer tensor [..., {self.n_features}] of feature "
                f"values; got dtype {x.dtype} and shape {tuple(x.shape)}."
            )
        r = torch.tensor(self.cardinalities, device=x.device)
        if bool(((x < 0) | (x >= r)).any()):
            raise ValueError(
                f"NaiveBayes: feature values must lie in 0..r_i−1 for cardinalities "
                f"{self.cardinalities}; got values from {int(x.min())} to {int(x.max())}."
            )
        cols = (self.offsets.to(x.device) + x).clamp_max(self.n_columns - 1)
        vals = (x < r - 1).to(dtype)
        out = torch.zeros(*x.shape[:-1], self.n_columns, dtype=dtype, device=x.device)
        return out.scatter_add(-1, cols, vals)

    def dense_fisher(self, mu: Pair) -> Tensor:
        """The joint Fisher ``Cov[T]`` at mean parameters ``mu``, formed densely ``[d, d]``.

        ``d = (s − 1) + s D``, coordinates ordered ``(θ_y, θ_x.flatten())``; unbatched. ``O(d²)``
        memory — the reference that :meth:`natural_gradient_at_mean` avoids.
        """
        n_y, _ = self._reference_cells(mu)
        mu_y, mu_x = mu
        s, D = self.n_classes, self.n_columns
        idx = self.feature_of_column.to(mu_x.device)
        same_feature = idx.unsqueeze(0) == idx.unsqueeze(1)
        p_x_given_y = mu_x / n_y.unsqueeze(-1)
        E_xx = torch.where(same_feature, 0.0, mu_x.unsqueeze(-1) * p_x_given_y.unsqueeze(-2))
        E_xx = E_xx + torch.diag_embed(mu_x)
        E_TT = mu_x.new_zeros(s - 1 + s * D, s - 1 + s * D)
        E_TT[: s - 1, : s - 1] = torch.diag(mu_y)
        cross = torch.zeros(s - 1, s, D, dtype=mu_x.dtype, device=mu_x.device)
        cross[torch.arange(s - 1), torch.arange(s - 1)] = mu_x[:-1]
        E_TT[: s - 1, s - 1 :] = cross.reshape(s - 1, s * D)
        E_TT[s - 1 :, : s - 1] = cross.reshape(s - 1, s * D).T
        E_TT[s - 1 :, s - 1 :] = torch.block_diag(*E_xx)
        mean = torch.cat([mu_y, mu_x.reshape(-1)])
        return E_TT - mean.unsqueeze(-1) * mean.unsqueeze(-2)

    def conditional(self, theta: Pair) -> Pair:
        """MLR parameters ``L θ = (β, W) = (θ_y, θ_x[:s−1] − θ_x[s−1])``."""
        theta_y, theta_x = theta
        return theta_y, theta_x[..., :-1, :] - theta_x[..., -1:, :]

    def lift(self, grad_beta: Tensor, grad_W: Tensor) -> Pair:
        """``Lᵀ``: a gradient in ``(β, W)`` as a gradient in the joint ``θ``."""
        last = -grad_W.sum(-2, keepdim=True)
        return grad_beta, torch.cat([grad_W, last], -2)
