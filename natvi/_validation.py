"""Input checks shared by every layer: one place for the wording of natvi's errors.

Every check raises ``ValueError`` whose message names the argument, says what is wrong and
what to do about it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "all_finite",
    "check_finite",
    "check_vector_matrix",
    "check_same_shape",
]


def all_finite(*tensors: Tensor) -> bool:
    """Whether every entry of every tensor is finite (integer tensors always are).

    One reduction per floating-point tensor: a NaN or an infinity makes the sum non-finite, so a
    finite sum settles it; only a non-finite sum (which finite entries can also give, by
    overflow) is checked entry by entry.
    """
    for x in tensors:
        if x.is_floating_point():
            total = x.detach().sum() if x.requires_grad else x.sum()
            if not math.isfinite(float(total)) and not bool(torch.isfinite(x).all()):
                return False
        elif not bool(torch.isfinite(x).all()):
            return False
    return True


def check_finite(name: str, x: Tensor) -> None:
    """Raise ``ValueError`` if ``x`` holds a NaN or an infinity."""
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.is_floating_point() and not all_finite(x):
        bad = "NaN" if bool(torch.isnan(x).any()) else "infinite"
        raise ValueError(
            f"{name} contains {bad} values; check the data and the previous optimisation "
            "step (a diverged step often shows up here first)."
        )


def check_vector_matrix(vec_name: str, vec: Tensor, mat_name: str, mat: Tensor) -> None:
    """Check that ``vec`` is ``[..., M]`` and ``mat`` is ``[..., M, M]`` with matching batch."""
    if vec.dim() < 1:
        raise ValueError(f"{vec_name} must have shape [..., M]; got a scalar.")
    M = vec.shape[-1]
    if mat.dim() < 2 or mat.shape[-1] != mat.shape[-2]:
        raise ValueError(
            f"{mat_name} must be square with shape [..., M, M]; got {tuple(mat.shape)}."
        )
    if mat.shape[-1] != M or mat.shape[:-2] != vec.shape[:-1]:
        raise ValueError(
            f"shape mismatch: {vec_name} has shape {tuple(vec.shape)} so {mat_name} must have shape "
            f"{tuple(vec.shape[:-1]) + (M, M)}, but it has {tuple(mat.shape)}."
        )


def check_same_shape(a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    """Check that two tensors of a diagonal family share one shape ``[..., M]``."""
    if a.shape != b.shape:
        raise ValueError(
            f"shape mismatch: {a_name} has shape {tuple(a.shape)} but {b_name} has "
            f"{tuple(b.shape)}; the diagonal family needs both as [..., M]."
        )
