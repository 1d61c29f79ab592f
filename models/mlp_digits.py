"""Digits (8×8, 10 classes) for training torch models: an MLP and multinomial logistic regression.

scikit-learn's bundled digits (1797 images × 64 pixels, classes 0…9), a seeded random
70/30 train/test split, pixels standardised with the training statistics. The models are plain
``nn.Module``s mapping ``[B, 64]`` to logits ``[B, 10]``, trained with cross-entropy — the
setting of the TNGD paper's MNIST study at a size a CPU runs in seconds.

Example:
    >>> from models import mlp_digits
    >>> data = mlp_digits.load(dtype=torch.float64)
    >>> model = mlp_digits.mlp(hidden=32, seed=0, dtype=torch.float64)   # 64→32→10, 2410 params
    >>> model(data.X[:5]).shape
    torch.Size([5, 10])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["DigitsData", "load", "mlp", "mlr", "accuracy", "NUM_CLASSES", "NUM_FEATURES"]

NUM_CLASSES = 10
NUM_FEATURES = 64


@dataclass
class DigitsData:
    """Train/test tensors: ``X [N, 64]``, ``y [N]`` (int64 class indices)."""

    X: Tensor
    y: Tensor
    X_test: Tensor
    y_test: Tensor


def load(
    test_fraction: float = 0.3, seed: int = 0, dtype: torch.dtype = torch.float32
) -> DigitsData:
    """The digits split; ``test_fraction`` in (0, 1), ``seed`` fixes the split."""
    from sklearn.datasets import load_digits

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}.")
    X_all, y_all = load_digits(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(X_all))
    n_test = int(round(test_fraction * len(X_all)))
    test, train = perm[:n_test], perm[n_test:]
    mu, sd = X_all[train].mean(0), X_all[train].std(0)
    sd = np.where(sd > 0, sd, 1.0)  # constant border pixels stay 0
    X, X_test = (X_all[train] - mu) / sd, (X_all[test] - mu) / sd
    y, y_test = y_all[train], y_all[test]
    as_x = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
    as_y = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    return DigitsData(as_x(X), as_y(y), as_x(X_test), as_y(y_test))


def mlp(hidden: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """``64 → hidden → 10`` with tanh: ``(64 + 1)·hidden + (hidden + 1)·10`` parameters."""
    if not (isinstance(hidden, int) and hidden >= 1):
        raise ValueError(f"hidden must be a positive int (hidden units), got {hidden!r}.")
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(NUM_FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, NUM_CLASSES)
    ).to(dtype)


def mlr(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Linear:
    """Multinomial logistic regression ``64 → 10`` (650 parameters)."""
    torch.manual_seed(seed)
    return nn.Linear(NUM_FEATURES, NUM_CLASSES).to(dtype)


def accuracy(model: nn.Module, X: Tensor, y: Tensor) -> float:
    """Fraction of ``X`` classified correctly (argmax of the logits)."""
    with torch.no_grad():
        return float((model(X).argmax(-1) == y).to(torch.float64).mean())
