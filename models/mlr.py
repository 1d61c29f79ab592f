"""Multinomial logistic regression (MLR) over discrete features: the model, the synthetic
benchmarks of the DSNGD paper, and scikit-learn's digits with discrete pixel intensities.

The MLR ``p(y | x) = softmax(β + W φ(x), 0)`` (last class the reference, ``φ`` one-hot with the
last value of each feature as reference, see :class:`natvi.expfam.NaiveBayes`) is the
conditional of the joint naive-Bayes family. The synthetic ground truth (:class:`SyntheticMLR`)
is such a joint, with natural parameters drawn i.i.d. ``N(0, σ²)``; its conditional is an MLR,
so the model is well specified, the optimum is known (``L θ*``) and the conditional KL

    KL = Σ_x p*(x) Σ_y p*(y | x) log(p*(y | x) / p_w(y | x))

is computed exactly by enumerating every feature configuration.

Example:
    >>> from models.mlr import MLR, SyntheticMLR, PAPER_MODELS
    >>> truth = SyntheticMLR(*PAPER_MODELS[0], sigma=0.7, seed=0)    # s = 10, r = (10, 5)
    >>> x, y = truth.sample(100, torch.Generator().manual_seed(1))
    >>> model = MLR(truth.n_classes, truth.cardinalities)
    >>> truth.conditional_kl(*model.parameters())                      # KL of the uniform model
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from natvi.expfam import NaiveBayes
from natvi.optim.dsngd import mlr_logits

__all__ = ["MLR", "SyntheticMLR", "PAPER_MODELS", "digits_discrete"]

# (class cardinality s, feature cardinalities) of the synthetic models of arXiv 2001.06744
PAPER_MODELS: list[tuple[int, list[int]]] = [
    (10, [10, 5]),
    (20, [10, 5, 10, 5]),
    (30, [10, 5, 10, 5, 10, 5]),
]


class MLR(torch.nn.Module):
    """MLR with parameters ``beta [s−1]`` and ``W [s−1, D]`` (zeros: the uniform conditional).

    ``forward(x [B, m] ints) -> logits [B, s]``; :meth:`loss` is the mean log-loss.
    """

    def __init__(
        self, n_classes: int, cardinalities: Sequence[int], dtype: torch.dtype = torch.float64
    ) -> None:
        super().__init__()
        self.family = NaiveBayes(n_classes, cardinalities)
        s, D = n_classes, self.family.n_columns
        self.beta = torch.nn.Parameter(torch.zeros(s - 1, dtype=dtype))
        self.W = torch.nn.Parameter(torch.zeros(s - 1, D, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return mlr_logits(self.beta, self.W, self.family.one_hot(x, dtype=self.W.dtype))

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean conditional log-loss ``−(1/B) Σ log p(y_b | x_b)``."""
        return torch.nn.functional.cross_entropy(self(x), y)


class SyntheticMLR:
    """A random naive-Bayes joint (natural parameters ``N(0, σ²)``) and its MLR conditional.

    Args:
        n_classes: ``s``.
        cardinalities: ``(r_1, …, r_m)``.
        sigma: standard deviation of the joint natural parameters.
        seed: seed of the draw.
    """

    def __init__(
        self, n_classes: int, cardinalities: Sequence[int], sigma: float, seed: int = 0
    ) -> None:
        self.family = NaiveBayes(n_classes, cardinalities)
        self.n_classes, self.cardinalities = n_classes, tuple(cardinalities)
        gen = torch.Generator().manual_seed(seed)
        s, D = n_classes, self.family.n_columns
        self.theta = (
            sigma * torch.randn(s - 1, generator=gen, dtype=torch.float64),
            sigma * torch.randn(s, D, generator=gen, dtype=torch.float64),
        )
        self.beta, self.W = self.family.conditional(self.theta)
        p_y, p_yx = self.family.to_mean(self.theta)
        self.p_y = torch.cat([p_y, 1 - p_y.sum(-1, keepdim=True)])
        self._tables = self._value_tables(p_yx / self.p_y.unsqueeze(-1))
        self._exact: tuple[Tensor, Tensor, Tensor] | None = None

    def _enumerate(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(φ(x), log p*(x), log p*(y | x))`` over every configuration of x (built once)."""
        if self._exact is None:
            x_all = torch.tensor(
                list(itertools.product(*[range(r) for r in self.cardinalities])), dtype=torch.long
            )
            phi = self.family.one_hot(x_all)
            joint = mlr_logits(self.theta[0], self.theta[1][:-1] - self.theta[1][-1], phi)
            # log p*(y, x) = θ_y + θ_x[y]·φ(x) − A(θ*) with θ_s = 0
            log_joint = (
                torch.cat([self.theta[0], self.theta[0].new_zeros(1)]) + phi @ self.theta[1].T
            )
            log_px = torch.logsumexp(log_joint, -1) - self.family.log_partition(self.theta)
            self._exact = (phi, log_px, torch.log_softmax(joint, -1))
        return self._exact

    def _value_tables(self, p_x_given_y: Tensor) -> list[Tensor]:
        """``p(x_i = v | y)`` as ``[s, r_i]`` tables (reference value last)."""
        tables = []
        for off, r in zip(self.family.offsets.tolist(), self.cardinalities):
            head = p_x_given_y[:, off : off + r - 1]
            tables.append(torch.cat([head, 1 - head.sum(-1, keepdim=True)], -1))
        return tables

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` samples ``(x [n, m] long, y [n] long)`` from the joint."""
        y = torch.multinomial(self.p_y, n, replacement=True, generator=generator)
        cols = [torch.multinomial(t[y], 1, generator=generator).squeeze(-1) for t in self._tables]
        return torch.stack(cols, -1), y

    @property
    def num_configurations(self) -> int:
        return math.prod(self.cardinalities)

    @torch.no_grad()
    def conditional_kl(self, beta: Tensor, W: Tensor) -> float:
        """Exact ``E_{p*(x)} KL(p*(y | x) ‖ p_w(y | x))`` over every configuration of x."""
        phi, log_px, log_cond = self._enumerate()
        log_q = torch.log_softmax(mlr_logits(beta.double(), W.double(), phi), -1)
        kl_x = (log_cond.exp() * (log_cond - log_q)).sum(-1)
        return float((log_px.exp() * kl_x).sum())


def digits_discrete(
    levels: int = 5, test_fraction: float = 0.3, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[int]]:
    """scikit-learn's digits with each pixel's intensity (0..16) binned into ``levels`` values.

    Returns ``(x_train [N, 64] long, y_train [N] long, x_test, y_test, cardinalities)``.
    """
    from sklearn.datasets import load_digits

    if not 2 <= int(levels) <= 17:
        raise ValueError(f"levels must be in 2..17 (pixel intensities are 0..16), got {levels!r}.")
    X, y = load_digits(return_X_y=True)
    x = np.minimum((X * levels / 17.0).astype(np.int64), levels - 1)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    t = lambda a: torch.as_tensor(a, dtype=torch.long)
    return t(x[train]), t(y[train]), t(x[test]), t(y[test]), [int(levels)] * x.shape[1]
