"""Domain checks for the exponential families: one wording for every family's errors."""

from __future__ import annotations

from torch import Tensor

from natvi._validation import check_finite

__all__ = ["require"]


def require(ok: Tensor, name: str, x: Tensor, what: str, family: str) -> None:
    """Raise ``ValueError`` unless every entry of the boolean tensor ``ok`` holds.

    Args:
        ok: elementwise condition on ``x`` (already evaluated).
        name: the argument's name, e.g. ``"theta"``.
        x: the argument itself (checked for NaN/inf first, for a sharper message).
        what: the condition in words, e.g. ``"in the open interval (0, 1)"``.
        family: the family's name, e.g. ``"Bernoulli"``.
    """
    if bool(ok.all()):
        return
    check_finite(name, x)
    raise ValueError(
        f"{family}: {name} must be {what}; {int((~ok).sum())} of {ok.numel()} entries are not. "
        "Pass parameters inside the family's domain; if they came from an optimisation step, "
        "use a smaller step size."
    )
