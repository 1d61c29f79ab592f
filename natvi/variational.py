"""The variational distribution q(u) = N(m, S) held as ``nn.Parameter``s in a parameterisation.

This is the one object natural-gradient optimisers look for in a model: every
:class:`GaussianVariational` found by ``model.modules()`` is a block whose parameters are updated
with natural gradients in its own coordinates (see :class:`natvi.optim.NaturalGradient`). Models
(:mod:`natvi.gp`, the GPyTorch interop) own one and read ``q`` from it; they never touch ξ
directly.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

from natvi.parameterizations import Natural, Parameterization

__all__ = ["GaussianVariational", "owner"]


class _Owner:
    """A weak reference to a q that pickles and copies as an empty tag (the copy's q re-tags)."""

    __slots__ = ("ref",)

    def __init__(self, q: GaussianVariational | None = None) -> None:
        self.ref = None if q is None else weakref.ref(q)

    def __call__(self) -> GaussianVariational | None:
        return None if self.ref is None else self.ref()

    def __reduce__(self):
        return _Owner, ()


def owner(tensor: Tensor) -> GaussianVariational | None:
    """The :class:`GaussianVariational` whose coordinate ``tensor`` is (``None``: none)."""
    tag = getattr(tensor, "_natvi_q", None)
    return tag() if tag is not None else None


class GaussianVariational(nn.Module):
    """``q(u) = N(m, S)`` over ``u [*batch_shape, M]`` in the coordinates of ``parameterization``.

    The coordinates ξ are registered as parameters under ``parameterization.names`` (for
    :class:`~natvi.parameterizations.MeanCholesky`: ``mean [*batch, M]`` and
    ``scale_tril [*batch, M, M]``). Initialised at ``N(mean, cov)``, by default ``N(0, I)`` (the
    whitened GP prior).

    Args:
        num_inducing: M, the dimension of u.
        batch_shape: leading batch dimensions, e.g. ``(L,)`` for L latent functions.
        parameterization: the coordinates ξ; default :class:`~natvi.parameterizations.Natural`.
        mean: initial mean ``[*batch, M]`` (default zeros).
        cov: initial covariance ``[*batch, M, M]`` (diagonal family: variances ``[*batch, M]``),
            default the identity.
        dtype, device: of the parameters when ``mean``/``cov`` are not given.

    Example:
        >>> q = GaussianVariational(5, batch_shape=(2,))
        >>> m, S = q.meancov()          # [2, 5], [2, 5, 5]
    """

    def __init__(
        self,
        num_inducing: int,
        batch_shape: tuple[int, ...] = (),
        parameterization: Parameterization | None = None,
        mean: Tensor | None = None,
        cov: Tensor | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if int(num_inducing) < 1:
            raise ValueError(f"num_inducing must be a positive integer, got {num_inducing}.")
        self.parameterization = parameterization if parameterization is not None else Natural()
        self.num_inducing = int(num_inducing)
        self.batch_shape = torch.Size(batch_shape)
        kw = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        shape = (*self.batch_shape, self.num_inducing)
        if mean is None:
            mean = torch.zeros(shape, **kw)
        if cov is None:
            eye = torch.ones(shape, **kw)
            cov = eye if self.parameterization.diagonal else torch.diag_embed(eye)
        xi = self.parameterization.from_prior(mean, cov)
        for name, value in zip(self.parameterization.names, xi):
            self.register_parameter(name, nn.Parameter(value.detach().clone()))
        self._tag()

    def _tag(self) -> None:
        """Tag each coordinate with its q, so that an optimiser handed bare tensors
        (``model.variational_parameters()``) finds the parameterisation (:func:`owner`)."""
        tag = _Owner(self)
        for p in self.xi():
            p._natvi_q = tag

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._tag()  # conversions may replace the parameter objects
        return out

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._tag()  # copy.deepcopy and pickling make new parameter objects

    def xi(self) -> tuple[nn.Parameter, ...]:
        """The coordinates ξ as the module's parameters, in ``parameterization.names`` order."""
        return tuple(getattr(self, name) for name in self.parameterization.names)

    def meancov(self) -> tuple[Tensor, Tensor]:
        """``(m [*batch, M], S [*batch, M, M])``; diagonal family: ``S`` the variances."""
        return self.parameterization.to_meancov(*self.xi())

    def moments(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(m, S, log det S [*batch])``: :meth:`meancov` and the log-determinant, from one
        factorisation where the parameterisation allows (``Natural``: one Cholesky)."""
        return self.parameterization.to_moments(*self.xi())

    @torch.no_grad()
    def set_meancov(self, mean: Tensor, cov: Tensor) -> None:
        """Overwrite q with ``N(mean, cov)`` in place (keeps the parameter objects)."""
        for p, value in zip(self.xi(), self.parameterization.from_meancov(mean, cov)):
            p.copy_(value)

    def extra_repr(self) -> str:
        return (
            f"num_inducing={self.num_inducing}, batch_shape={tuple(self.batch_shape)}, "
            f"parameterization={self.parameterization!r}"
        )
