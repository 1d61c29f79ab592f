"""Variational GP models: :class:`SVGP` (sparse, inducing points) and :class:`VGP` (full).

Both hold ``q`` as a :class:`natvi.GaussianVariational` at ``model.q`` in any parameterisation,
use GPyTorch kernels and means, and take likelihoods from :mod:`natvi.likelihoods`. The GPyTorch
interop (a variational distribution for ``gpytorch.models.ApproximateGP``) is in
:mod:`natvi.gp.gpytorch`.
"""

from natvi.gp import conditionals
from natvi.gp.base import VariationalGP
from natvi.gp.svgp import SVGP
from natvi.gp.vgp import VGP

__all__ = ["SVGP", "VGP", "VariationalGP", "conditionals"]
