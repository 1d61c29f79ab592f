"""Which ``pyro.param``s of a guide form a Gaussian q, and in which coordinates.

A *block* is one Gaussian ``q = N(m, S)`` held in the param store: the names of its ``pyro.param``s
and a :class:`~natvi.parameterizations.Parameterization` whose coordinates are exactly the
unconstrained tensors Pyro stores (a :class:`~natvi.pyro.coords.Constrained` built from each
param's constraint). Supported guides:

- ``AutoMultivariateNormal``: one block ``(loc, scale, scale_tril)`` → ``LocScaleUnitTril``;
- ``AutoDiagonalNormal``: one block ``(loc, scale)`` → ``DiagLocScale``;
- ``AutoNormal``: one diagonal block per latent site ``(locs.<site>, scales.<site>)``;
- ``AutoGuideList`` whose parts are all of these: the blocks of each part;
- any other guide (a function or module, not an ``AutoGuide``) that declares its Gaussian params
  with :func:`gaussian_guide` or :func:`register_gaussian`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoGuide,
    AutoGuideList,
    AutoMultivariateNormal,
    AutoNormal,
)
from torch import Tensor
from torch.distributions import transform_to

from natvi._linalg import cholesky
from natvi.parameterizations import MeanCholesky, Parameterization
from natvi.pyro.coords import Constrained, DiagLocScale, LocScaleUnitTril

__all__ = [
    "SUPPORTED_GUIDES",
    "GaussianBlock",
    "register_gaussian",
    "gaussian_guide",
    "check_supported",
    "find_blocks",
]

SUPPORTED_GUIDES = (
    "AutoMultivariateNormal, AutoDiagonalNormal, AutoNormal, an AutoGuideList of these, or a "
    "custom guide that declares its "
    "Gaussian pyro.params with natvi.pyro.gaussian_guide / natvi.pyro.register_gaussian"
)

_DECLARED: dict[tuple[str, ...], Parameterization] = {}


@dataclass(frozen=True)
class GaussianBlock:
    """One Gaussian q in the param store.

    Attributes:
        names: the ``pyro.param`` names of its coordinates, in ``parameterization.names`` order.
        parameterization: coordinates = the unconstrained tensors Pyro stores under ``names``.
        flatten: whether the tensors are viewed as vectors ``[M]`` (diagonal family of an
            ``AutoNormal`` site of any shape).
    """

    names: tuple[str, ...]
    parameterization: Parameterization
    flatten: bool = False


def register_gaussian(parameterization: Parameterization, *param_names: str) -> None:
    """Declare that the ``pyro.param``s ``param_names`` hold a Gaussian q in ``parameterization``.

    :class:`~natvi.pyro.NaturalSVI` then updates them with natural-gradient steps. The params may
    carry constraints: natvi composes each param's constraint transform into the coordinates.
    Declaring the same name again replaces the earlier declaration.

    Example::

        def guide(x, y):
            m = pyro.param("w_mean", torch.zeros(3))
            L = pyro.param("w_tril", torch.eye(3))
            register_gaussian(MeanCholesky(), "w_mean", "w_tril")
            pyro.sample("w", dist.MultivariateNormal(m, scale_tril=L))
    """
    if not isinstance(parameterization, Parameterization):
        raise ValueError(
            "parameterization must be a natvi.parameterizations.Parameterization instance (e.g. "
            f"MeanCholesky()), got {type(parameterization).__name__}."
        )
    if len(param_names) != len(parameterization.names):
        raise ValueError(
            f"{parameterization!r} has {len(parameterization.names)} coordinates "
            f"({', '.join(parameterization.names)}); pass one pyro.param name for each, got "
            f"{len(param_names)}."
        )
    key = tuple(param_names)
    for old in [k for k in _DECLARED if set(k) & set(key)]:
        del _DECLARED[old]
    _DECLARED[key] = parameterization


def gaussian_guide(
    name: str,
    parameterization: Parameterization | None = None,
    *,
    mean: Tensor | None = None,
    cov: Tensor | None = None,
    dim: int | None = None,
) -> Tensor:
    """Sample the latent site ``name [M]`` from ``q = N(m, S)`` declared in natvi coordinates.

    Call it inside a Pyro guide. The coordinates ξ of ``parameterization`` (default
    :class:`~natvi.parameterizations.MeanCholesky`) become ``pyro.param``s named
    ``"<name>.<coordinate>"`` (e.g. ``"w.mean"``, ``"w.scale_tril"``), initialised at
    ``N(mean, cov)`` (default ``N(0, I)``; diagonal family: ``cov`` the variances ``[M]``), and are
    registered for :class:`~natvi.pyro.NaturalSVI`.

    Args:
        name: the sample site, as in the model.
        parameterization: the coordinates of q.
        mean: initial mean ``[M]``.
        cov: initial covariance ``[M, M]`` (or variances ``[M]`` for the diagonal family).
        dim: M when ``mean`` is not given.

    Returns:
        The sampled value ``[M]``.

    Example::

        def guide(x, y):
            gaussian_guide("w", natvi.parameterizations.Natural(), dim=3)
    """
    p = parameterization if parameterization is not None else MeanCholesky()
    names = tuple(f"{name}.{coord}" for coord in p.names)
    store = pyro.get_param_store()
    if not all(n in store for n in names):
        if mean is None:
            if dim is None or int(dim) < 1:
                raise ValueError(
                    f"gaussian_guide({name!r}) needs the dimension: pass dim=M (a positive "
                    "integer) or an initial mean=[M]."
                )
            mean = torch.zeros(int(dim), dtype=torch.get_default_dtype())
        if cov is None:
            cov = torch.ones_like(mean) if p.diagonal else torch.diag_embed(torch.ones_like(mean))
        cov = torch.as_tensor(cov, dtype=mean.dtype, device=mean.device)
        init = p.from_prior(mean, cov)
    else:
        init = (None,) * len(names)
    xi = tuple(
        pyro.param(n, x.detach().clone()) if x is not None else pyro.param(n)
        for n, x in zip(names, init)
    )
    register_gaussian(p, *names)
    m, S = p.to_meancov(*xi)
    if p.diagonal:
        q = dist.Normal(m, S.sqrt()).to_event(1)
    else:
        q = dist.MultivariateNormal(m, scale_tril=cholesky(S, f"the covariance of {name!r}"))
    return pyro.sample(name, q)


def check_supported(guide: Callable) -> None:
    """Raise ``ValueError`` for an ``AutoGuide`` whose latent family natvi cannot handle
    (an ``AutoGuideList`` is supported when each of its parts is)."""
    if isinstance(guide, AutoGuideList):
        for part in guide:
            check_supported(part)
        return
    if isinstance(guide, AutoGuide) and not isinstance(
        guide, (AutoMultivariateNormal, AutoDiagonalNormal, AutoNormal)
    ):
        raise ValueError(
            f"natvi.pyro.NaturalSVI cannot take natural gradients for a {type(guide).__name__} "
            f"guide: its latent distribution is not a full or diagonal Gaussian. Supported: "
            f"{SUPPORTED_GUIDES}. Fit {type(guide).__name__} with pyro.infer.SVI instead."
        )


def _transforms(names: tuple[str, ...]) -> list:
    constraints = pyro.get_param_store().get_state()["constraints"]
    return [transform_to(constraints[n]) for n in names]


def _auto_blocks(guide: AutoGuide) -> list[GaussianBlock]:
    if isinstance(guide, AutoGuideList):
        return [block for part in guide for block in _auto_blocks(part)]
    store = pyro.get_param_store()

    def store_name(attr: str) -> str:
        module_params = dict(guide.named_parameters())
        tensor = module_params.get(attr + "_unconstrained", module_params.get(attr))
        return store.param_name(tensor)

    if isinstance(guide, AutoMultivariateNormal):
        names = tuple(store_name(a) for a in ("loc", "scale", "scale_tril"))
        return [GaussianBlock(names, Constrained(LocScaleUnitTril(), _transforms(names)))]
    if isinstance(guide, AutoDiagonalNormal):
        names = tuple(store_name(a) for a in ("loc", "scale"))
        return [GaussianBlock(names, Constrained(DiagLocScale(), _transforms(names)), True)]
    blocks = []
    for site in guide.prototype_trace.iter_stochastic_nodes():
        names = (store_name(f"locs.{site[0]}"), store_name(f"scales.{site[0]}"))
        blocks.append(GaussianBlock(names, Constrained(DiagLocScale(), _transforms(names)), True))
    return blocks


def find_blocks(guide: Callable, param_names: set[str]) -> list[GaussianBlock]:
    """The Gaussian blocks of ``guide`` among the params ``param_names`` seen in its last run.

    Raises ``ValueError`` when the guide holds no Gaussian natvi can update.
    """
    check_supported(guide)
    if isinstance(guide, AutoGuide):
        return _auto_blocks(guide)
    blocks = []
    for names, p in _DECLARED.items():
        if set(names) <= param_names:
            blocks.append(GaussianBlock(names, Constrained(p, _transforms(names)), p.diagonal))
    if not blocks:
        label = getattr(guide, "__name__", type(guide).__name__)
        raise ValueError(
            f"guide {label!r} declares no Gaussian q that natvi can update with natural "
            f"gradients. Supported: {SUPPORTED_GUIDES}."
        )
    return blocks
