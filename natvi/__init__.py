"""natvi — natural-gradient variational inference in PyTorch."""

from natvi import (
    distributed,
    expfam,
    fisher,
    gp,
    likelihoods,
    linalg,
    optim,
    parameterizations,
    strategy,
)
from natvi._threads import retain_freed_memory
from natvi.fit import fit
from natvi.model import VariationalModel
from natvi.natgrad import expectation_gradient, natural_gradient
from natvi.variational import GaussianVariational

__version__ = "0.1.0"


_ESTIMATORS = ("SparseGPClassifier", "SparseGPRegressor", "SparseGPCountRegressor")


def __getattr__(name: str):
    """Lazy ``natvi.pyro`` and estimators: importing Pyro costs about a second and scikit-learn
    (which the estimators need) about as much; only their users pay it."""
    import importlib

    if name == "pyro":
        return importlib.import_module("natvi.pyro")
    if name in _ESTIMATORS:
        return getattr(importlib.import_module("natvi.estimators"), name)
    raise AttributeError(f"module 'natvi' has no attribute {name!r}")

__all__ = [
    "expfam",
    "fisher",
    "gp",
    "likelihoods",
    "linalg",
    "optim",
    "fit",
    "retain_freed_memory",
    "distributed",
    "strategy",
    "VariationalModel",
    "parameterizations",
    "natural_gradient",
    "expectation_gradient",
    "GaussianVariational",
    "SparseGPClassifier",
    "SparseGPRegressor",
    "SparseGPCountRegressor",
    "__version__",
]
