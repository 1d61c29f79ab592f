"""natvi — natural-gradient variational inference in PyTorch."""

from natvi import expfam, fisher, gp, likelihoods, linalg, optim, parameterizations
from natvi.fit import fit
from natvi.natgrad import expectation_gradient, natural_gradient
from natvi.variational import GaussianVariational

__version__ = "0.1.0"

__all__ = [
    "expfam",
    "fisher",
    "gp",
    "likelihoods",
    "linalg",
    "optim",
    "fit",
    "parameterizations",
    "natural_gradient",
    "expectation_gradient",
    "GaussianVariational",
    "__version__",
]
