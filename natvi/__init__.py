"""natvi — natural-gradient variational inference in PyTorch."""

from natvi import expfam, gp, likelihoods, linalg, parameterizations
from natvi.natgrad import expectation_gradient, natural_gradient
from natvi.variational import GaussianVariational

__version__ = "0.1.0"

__all__ = [
    "expfam",
    "gp",
    "likelihoods",
    "linalg",
    "parameterizations",
    "natural_gradient",
    "expectation_gradient",
    "GaussianVariational",
    "__version__",
]
