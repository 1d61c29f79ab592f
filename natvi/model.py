"""``VariationalModel``: what :func:`natvi.fit` needs of a model, as a runtime-checkable protocol.

A model is trained by :func:`natvi.fit` when it has

- ``elbo(X, y, num_data=None) -> Tensor``: the **total** ELBO (a minibatch of ``B`` rows scaled
  by ``num_data / B``);
- ``hyperparameters()`` and ``variational_parameters()``: iterators over its parameters (the
  second are the coordinates ξ of the :class:`natvi.GaussianVariational` modules it holds).

Optional, read with a default:

- ``prior_kl() -> Tensor``: ``KL(q ‖ p)``, needed for data-parallel training (the term is counted
  once across ranks);
- ``needs_full_batch: bool`` (default ``False``): ``True`` for a model whose q holds one variable
  per training datum (:class:`natvi.gp.VGP`), which cannot be trained on shards of the data.

Example:
    >>> isinstance(natvi.gp.SVGP(...), VariationalModel)
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

__all__ = ["VariationalModel", "check_model", "needs_full_batch"]


@runtime_checkable
class VariationalModel(Protocol):
    """The model contract of :func:`natvi.fit` (see the module docstring)."""

    def elbo(self, X: Tensor, y: Tensor, num_data: int | None = None) -> Tensor: ...

    def hyperparameters(self) -> Iterator[nn.Parameter]: ...

    def variational_parameters(self) -> Iterator[nn.Parameter]: ...


_MEMBERS = ("elbo", "hyperparameters", "variational_parameters")


def check_model(model: Any) -> None:
    """Raise :class:`ValueError` naming the first missing method unless ``model`` is a
    :class:`VariationalModel`."""
    if isinstance(model, VariationalModel):
        return
    missing = next(name for name in _MEMBERS if not callable(getattr(model, name, None)))
    raise ValueError(
        f"model must define {missing}() (the natvi model contract: elbo(X, y, num_data), "
        f"hyperparameters(), variational_parameters()); {type(model).__name__} does not."
    )


def needs_full_batch(model: Any) -> bool:
    """Whether ``model`` must see every training datum in each ELBO (e.g. a VGP)."""
    return bool(getattr(model, "needs_full_batch", False))
