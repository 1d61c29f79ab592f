"""natvi — natural-gradient variational inference in PyTorch."""

from natvi import distributed, expfam, fisher, gp, likelihoods, linalg, optim, parameterizations
from natvi.estimators import SparseGPClassifier, SparseGPCountRegressor, SparseGPRegressor
from natvi.fit import fit
from natvi.natgrad import expectation_gradient, natural_gradient
from natvi.variational import GaussianVariational

__version__ = "0.1.0"


def __getattr__(name: str):
    """Lazy ``natvi.pyro`` (importing Pyro costs about a second; only its users pay it)."""
    if name == "pyro":
        import importlib

        return importlib.import_module("natvi.pyro")
    raise AttributeError(f"module 'natvi' has no attribute {name!r}")

__all__ = [
    "expfam",
    "fisher",
    "gp",
    "likelihoods",
    "linalg",
    "optim",
    "fit",
    "distributed",
    "parameterizations",
    "natural_gradient",
    "expectation_gradient",
    "GaussianVariational",
    "SparseGPClassifier",
    "SparseGPRegressor",
    "SparseGPCountRegressor",
    "__version__",
]
