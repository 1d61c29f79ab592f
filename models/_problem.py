"""What every reference model returns, and the pieces they share (splits, inducing inputs).

A builder ``models.<name>.build(seed=0, dtype=torch.float64, **overrides) -> Problem`` returns the
natvi model, its train/test data, the initial inducing inputs and hyperparameters (so that a peer
library can be set up on exactly the same problem) and every setting used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["Problem", "split", "standardize", "kmeans_inducing", "check_overrides", "ard_kernel"]


@dataclass
class Problem:
    """A reference problem: model + data + the settings used to build it.

    Attributes:
        name: the model's name (its module name in ``models/``).
        model: the natvi model (a ``natvi.gp.SVGP``).
        X, y: training inputs ``[N, D]`` and targets ``[N]``.
        X_test, y_test: held-out inputs ``[N*, D]`` and targets ``[N*]``.
        Z: the initial inducing inputs ``[M, D]`` (a copy; the model holds its own).
        lengthscale: initial ARD lengthscales ``[D]``.
        outputscale: initial kernel variance.
        likelihood: the likelihood's name in natvi's vocabulary (``natvi.likelihoods.name_of``:
            ``"bernoulli"``, ``"gaussian"``, ``"poisson"``, ...).
        likelihood_params: the likelihood's initial parameters (e.g. ``{"noise": 0.1}``).
        num_latent: number of latent GPs.
        settings: every setting the builder used (seed, sizes, dtype, ...).
        truth: known ground truth where the data are generated (e.g. the true rate function
            evaluated at ``X_test``); empty otherwise.
    """

    name: str
    model: nn.Module
    X: Tensor
    y: Tensor
    X_test: Tensor
    y_test: Tensor
    Z: Tensor
    lengthscale: Tensor
    outputscale: float
    likelihood: str
    likelihood_params: dict = field(default_factory=dict)
    num_latent: int = 1
    settings: dict = field(default_factory=dict)
    truth: dict = field(default_factory=dict)

    @property
    def num_data(self) -> int:
        return int(self.X.shape[0])


def check_overrides(name: str, overrides: dict, allowed: dict) -> dict:
    """Merge ``overrides`` into the defaults ``allowed``; an unknown key is a ``ValueError``."""
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(
            f"models.{name}.build got unknown setting(s) {unknown}; "
            f"the settings are {sorted(allowed)}."
        )
    return {**allowed, **overrides}


def split(
    X: np.ndarray, y: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A random train/test split: ``(X_train, y_train, X_test, y_test)``."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}.")
    perm = rng.permutation(len(X))
    n_test = max(1, int(round(test_fraction * len(X))))
    test, train = perm[:n_test], perm[n_test:]
    return X[train], y[train], X[test], y[test]


def standardize(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero mean, unit variance per column, with the training set's statistics."""
    mu = X_train.mean(0)
    sd = X_train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return (X_train - mu) / sd, (X_test - mu) / sd


def kmeans_inducing(X: np.ndarray, num_inducing: int, seed: int) -> np.ndarray:
    """M inducing inputs ``[M, D]``: k-means centres of X (the usual initialisation)."""
    from sklearn.cluster import KMeans

    if not 1 <= num_inducing <= len(X):
        raise ValueError(
            f"num_inducing must lie in [1, N={len(X)}], got {num_inducing}; "
            "use fewer inducing points or more data."
        )
    km = KMeans(n_clusters=num_inducing, n_init=1, random_state=seed, max_iter=50)
    return km.fit(X).cluster_centers_


def ard_kernel(lengthscale: Tensor, outputscale: float, batch_shape: tuple[int, ...] = ()):
    """The ARD RBF kernel with a scale (GPyTorch), initialised at the given hyperparameters.

    Args:
        lengthscale: ``[D]`` initial lengthscales (one per input dimension).
        outputscale: initial kernel variance.
        batch_shape: ``(L,)`` for one kernel per latent function.
    """
    import gpytorch

    D = lengthscale.shape[-1]
    base = gpytorch.kernels.RBFKernel(ard_num_dims=D, batch_shape=torch.Size(batch_shape))
    kernel = gpytorch.kernels.ScaleKernel(base, batch_shape=torch.Size(batch_shape))
    kernel = kernel.to(dtype=lengthscale.dtype, device=lengthscale.device)
    base.lengthscale = lengthscale.expand(*batch_shape, 1, D).clone()
    kernel.outputscale = torch.full(batch_shape, float(outputscale), dtype=lengthscale.dtype)
    return kernel


def assemble(
    name: str,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    likelihood: nn.Module,
    settings: dict,
    likelihood_params: dict | None = None,
    num_latent: int = 1,
    truth: dict | None = None,
) -> Problem:
    """Build the natvi SVGP for ``data = (X, y, X_test, y_test)`` and wrap it in a Problem.

    Reads from ``settings``: ``seed``, ``dtype``, ``num_inducing``, ``lengthscale``,
    ``outputscale``, ``whiten``, ``parameterization``, ``q_diag``, ``learn_inducing``.
    Inducing inputs are k-means centres of the training inputs; the kernel is an ARD RBF with
    a scale, one per latent function when ``num_latent > 1``.
    """
    from natvi.gp import SVGP
    from natvi.likelihoods import name_of
    from natvi.parameterizations import Natural

    dtype = settings["dtype"]
    as_t = lambda a, dt=dtype: torch.as_tensor(np.ascontiguousarray(a), dtype=dt)
    X, y, X_test, y_test = data
    y_dtype = torch.long if likelihood.task == "multiclass" else dtype
    D = X.shape[1]
    Z = as_t(kmeans_inducing(X, settings["num_inducing"], settings["seed"]))
    lengthscale = torch.full((D,), float(settings["lengthscale"]), dtype=dtype)
    batch = (num_latent,) if num_latent > 1 else ()
    model = SVGP(
        kernel=ard_kernel(lengthscale, settings["outputscale"], batch),
        likelihood=likelihood.to(dtype=dtype),
        inducing_points=Z.clone(),
        whiten=settings["whiten"],
        parameterization=settings["parameterization"] or Natural(),
        num_latent=num_latent,
        q_diag=settings["q_diag"],
        learn_inducing=settings["learn_inducing"],
    ).to(dtype=dtype)
    return Problem(
        name=name,
        model=model,
        X=as_t(X),
        y=as_t(y, y_dtype),
        X_test=as_t(X_test),
        y_test=as_t(y_test, y_dtype),
        Z=Z,
        lengthscale=lengthscale,
        outputscale=float(settings["outputscale"]),
        likelihood=name_of(likelihood),
        likelihood_params=dict(likelihood_params or {}),
        num_latent=num_latent,
        settings=dict(settings),
        truth=dict(truth or {}),
    )


#: Settings every SVGP builder accepts (each model adds its own and may change a default).
SVGP_DEFAULTS = {
    "num_inducing": 50,
    "lengthscale": 1.0,
    "outputscale": 1.0,
    "whiten": True,
    "parameterization": None,
    "q_diag": None,
    "learn_inducing": True,
}
