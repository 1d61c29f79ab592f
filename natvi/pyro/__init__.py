"""Natural-gradient variational inference for Pyro models with Gaussian guides.

:class:`NaturalSVI` is a drop-in for :class:`pyro.infer.SVI` (``step(*args)`` returns the loss)
that updates the guide's Gaussian ``q = N(m, S)`` with natural-gradient steps computed by
:func:`natvi.natural_gradient` machinery from the gradients Pyro's ELBO already produces, and the
model's own params with an ordinary Pyro optimiser. Supported guides: ``AutoMultivariateNormal``,
``AutoDiagonalNormal``, ``AutoNormal``, an ``AutoGuideList`` of these, and custom guides that
declare their Gaussian params with :func:`gaussian_guide` or :func:`register_gaussian`.

Example::

    import pyro, natvi.pyro
    guide = pyro.infer.autoguide.AutoMultivariateNormal(model)
    svi = natvi.pyro.NaturalSVI(model, guide)   # one particle, Trace_ELBO, decaying step
    for step in range(200):
        loss = svi.step(x, y)
"""

from __future__ import annotations

from natvi.pyro.coords import Constrained, DiagLocScale, LocScaleUnitTril
from natvi.pyro.guides import (
    SUPPORTED_GUIDES,
    GaussianBlock,
    find_blocks,
    gaussian_guide,
    register_gaussian,
)
from natvi.pyro.svi import NaturalSVI, StepReport, default_schedule

__all__ = [
    "NaturalSVI",
    "default_schedule",
    "StepReport",
    "gaussian_guide",
    "register_gaussian",
    "find_blocks",
    "GaussianBlock",
    "SUPPORTED_GUIDES",
    "LocScaleUnitTril",
    "DiagLocScale",
    "Constrained",
]
