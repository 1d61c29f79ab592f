"""Ill-conditioned posteriors: GP regression / classification whose conditioning you control.

Inputs on ``[0, 1]`` (``num_data`` of them), inducing inputs on a regular grid, fixed
hyperparameters (nothing is learned but q). The whitened posterior precision is
``P = I + L⁻¹ K_zx W K_xz L⁻ᵀ`` (``Kzz = L Lᵀ``, ``W`` the likelihood curvature, ``1/σ²`` for a
Gaussian), so its condition number grows with the number of correlated points (``num_data``),
with the lengthscale (points become more correlated) and with ``1/noise``. For the Gaussian
likelihood the optimum is known exactly (Titsias 2009): :func:`exact_optimum`.

Example:
    >>> from models import ill_conditioned
    >>> problem = ill_conditioned.build(noise=1e-3, lengthscale=0.5)
    >>> m, S, elbo = ill_conditioned.exact_optimum(problem)
    >>> ill_conditioned.condition_number(S)      # of the posterior precision S⁻¹
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from models._problem import SVGP_DEFAULTS, Problem, ard_kernel, check_overrides

__all__ = ["build", "make_data", "exact_optimum", "condition_number"]

DEFAULTS = {
    **SVGP_DEFAULTS,
    "num_data": 200,
    "num_inducing": 20,
    "num_test": 200,
    "lengthscale": 0.2,
    "noise": 0.1,
    "likelihood": "gaussian",
    "learn_inducing": False,
}
LIKELIHOODS = ("gaussian", "bernoulli")


def make_data(
    num_data: int, num_test: int, noise: float, likelihood: str, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X [N, 1], y [N], X_test, y_test)`` from ``f(x) = sin(6x) + x`` on ``[0, 1]``.

    Gaussian: ``y = f + sqrt(noise) ε``; Bernoulli: ``y = 1[f + ε > 0.5]`` (probit-like labels).
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}.")
    if noise <= 0:
        raise ValueError(f"noise must be positive, got {noise}.")
    rng = np.random.default_rng(seed)
    f = lambda x: np.sin(6.0 * x) + x

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.uniform(0.0, 1.0, size=(n, 1))
        eps = rng.standard_normal(n)
        if likelihood == "gaussian":
            return x, f(x[:, 0]) + math.sqrt(noise) * eps
        return x, (f(x[:, 0]) + eps > 0.5).astype(float)

    X, y = draw(num_data)
    X_test, y_test = draw(num_test)
    return X, y, X_test, y_test


def build(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> Problem:
    """The SVGP with fixed hyperparameters; settings: see ``DEFAULTS``.

    ``noise`` is the Gaussian noise variance (unused for Bernoulli). Kernel and likelihood
    parameters are frozen (``requires_grad=False``) so that only q is optimised.
    """
    from natvi.gp import SVGP
    from natvi.likelihoods import by_name
    from natvi.parameterizations import Natural

    s = check_overrides("ill_conditioned", overrides, DEFAULTS) | {"seed": seed, "dtype": dtype}
    X, y, X_test, y_test = make_data(
        s["num_data"], s["num_test"], s["noise"], s["likelihood"], seed
    )
    Z = torch.linspace(0.0, 1.0, s["num_inducing"], dtype=dtype)[:, None]
    lengthscale = torch.full((1,), float(s["lengthscale"]), dtype=dtype)
    params = {"noise": s["noise"]} if s["likelihood"] == "gaussian" else {"link": "probit"}
    likelihood = by_name(s["likelihood"], **params)
    model = SVGP(
        kernel=ard_kernel(lengthscale, s["outputscale"]),
        likelihood=likelihood.to(dtype=dtype),
        inducing_points=Z.clone(),
        whiten=s["whiten"],
        parameterization=s["parameterization"] or Natural(),
        q_diag=s["q_diag"],
        learn_inducing=s["learn_inducing"],
    ).to(dtype=dtype)
    for p in model.hyperparameters():
        p.requires_grad_(False)
    as_t = lambda a: torch.as_tensor(a, dtype=dtype)
    return Problem(
        name="ill_conditioned",
        model=model,
        X=as_t(X),
        y=as_t(y),
        X_test=as_t(X_test),
        y_test=as_t(y_test),
        Z=Z,
        lengthscale=lengthscale,
        outputscale=float(s["outputscale"]),
        likelihood=s["likelihood"],
        likelihood_params=params,
        settings=s,
    )


def exact_optimum(problem: Problem, jitter: float = 1e-6) -> tuple[Tensor, Tensor, Tensor]:
    """The optimal q(u) and the optimal ELBO of a Gaussian-likelihood problem (Titsias 2009).

    Computed from scratch (plain Cholesky algebra, not natvi's code path). With ``Kzz = L Lᵀ``
    (``jitter`` added to the diagonal), ``A = L⁻¹ K_zx / σ`` ``[M, N]`` and ``B = I + A Aᵀ``:
    whitened ``S = B⁻¹``, ``m = B⁻¹ A y / σ``; unwhitened ``L m`` and ``L S Lᵀ``. The ELBO is the
    collapsed bound ``log N(y | 0, Q + σ²I) − tr(Kxx − Q) / (2σ²)``, ``Q = K_xz Kzz⁻¹ K_zx``.

    Returns:
        ``(m [M], S [M, M], elbo [])`` in the model's coordinates (whitened or not).
    """
    if problem.likelihood != "gaussian":
        raise ValueError(
            f"exact_optimum needs a Gaussian likelihood, the problem has {problem.likelihood!r}; "
            "for other likelihoods run natural gradients to convergence instead."
        )
    X, y, Z = problem.X, problem.y, problem.Z
    sigma2 = float(problem.likelihood_params["noise"])
    ell, s2 = problem.lengthscale, problem.outputscale
    k = lambda a, b: s2 * torch.exp(-0.5 * torch.cdist(a / ell, b / ell).square())
    K_zz = k(Z, Z) + jitter * torch.eye(Z.shape[0], dtype=Z.dtype)
    L = torch.linalg.cholesky(K_zz)
    A = torch.linalg.solve_triangular(L, k(Z, X), upper=False) / math.sqrt(sigma2)
    B = torch.eye(Z.shape[0], dtype=Z.dtype) + A @ A.T
    L_B = torch.linalg.cholesky(B)
    c = torch.linalg.solve_triangular(L_B, (A @ y)[:, None], upper=False) / math.sqrt(sigma2)
    S_w = torch.cholesky_solve(torch.eye(Z.shape[0], dtype=Z.dtype), L_B)
    m_w = torch.linalg.solve_triangular(L_B.T, c, upper=True)[:, 0]
    N = X.shape[0]
    elbo = (
        -0.5 * N * math.log(2 * math.pi * sigma2)
        - torch.log(torch.diagonal(L_B)).sum()
        - 0.5 * (y @ y) / sigma2
        + 0.5 * (c * c).sum()
        - 0.5 * (N * s2 - sigma2 * (A * A).sum()) / sigma2
    )
    if problem.settings["whiten"]:
        return m_w, S_w, elbo
    return L @ m_w, L @ S_w @ L.T, elbo


def condition_number(S: Tensor) -> float:
    """The condition number of the precision ``S⁻¹`` (equal to that of S) ``[M, M]``."""
    ev = torch.linalg.eigvalsh(0.5 * (S + S.mT))
    return float(ev[-1] / ev[0])
