"""Bayesian logistic regression as a Pyro model, on real and on ill-conditioned data.

``w ~ N(0, prior_scale² I)``, ``y_n ~ Bernoulli(sigmoid(x_nᵀ w))``, with an intercept column of
ones appended to the features. Two data sets:

- :func:`breast_cancer` — scikit-learn's bundled Wisconsin diagnostic set (569 tumours × 30
  features, benign = 1), features standardised; optionally only the first ``num_features``.
- :func:`ill_conditioned` — generated here: features that share one latent factor, so that they
  are strongly correlated and the feature covariance ``XᵀX / N`` has condition number ≥ 10⁴
  (asserted); labels drawn from the model with known weights. The posterior is then a long,
  thin ellipse: the regime where natural gradients beat Adam most clearly.

Example:
    >>> from models import bayesian_logistic
    >>> problem = bayesian_logistic.breast_cancer()
    >>> problem.model(problem.X, problem.y)          # a Pyro model; site "w" [D]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

__all__ = ["LogisticProblem", "logistic_model", "breast_cancer", "ill_conditioned", "nuts_reference"]


def logistic_model(X: Tensor, y: Tensor | None = None, prior_scale: float = 1.0) -> Tensor:
    """Pyro model: ``w [D] ~ N(0, prior_scale² I)``, ``y [N] ~ Bernoulli(logits = X w)``."""
    w = pyro.sample(
        "w",
        dist.Normal(torch.zeros(X.shape[-1], dtype=X.dtype, device=X.device), prior_scale)
        .to_event(1),
    )
    with pyro.plate("data", X.shape[0]):
        # w [*batch, 1, D] under vectorised particles (its last batch dim is this plate's)
        logits = (X * w).sum(-1)
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)
    return w


@dataclass
class LogisticProblem:
    """A data set for :func:`logistic_model`: ``X [N, D]`` (last column the intercept), ``y [N]``."""

    name: str
    X: Tensor
    y: Tensor
    prior_scale: float = 1.0

    def model(self, X: Tensor, y: Tensor | None = None) -> Tensor:
        """The Pyro model with this problem's prior."""
        return logistic_model(X, y, self.prior_scale)

    def potential(self, params: dict[str, Tensor]) -> Tensor:
        """``−log p(y, w)`` up to a constant, for ``params = {"w": w [D]}`` (NUTS's potential)."""
        w = params["w"]
        f = self.X @ w
        log_lik = (self.y * f - torch.nn.functional.softplus(f)).sum()
        return -log_lik + 0.5 * (w * w).sum() / self.prior_scale**2

    @property
    def condition_number(self) -> float:
        """Condition number of the feature covariance ``XᵀX / N`` (intercept column excluded)."""
        Z = self.X[:, :-1]
        return float(torch.linalg.cond(Z.mT @ Z / Z.shape[0]))


def _with_intercept(X: np.ndarray, dtype: torch.dtype) -> Tensor:
    X = torch.as_tensor(X, dtype=dtype)
    return torch.cat([X, torch.ones(X.shape[0], 1, dtype=dtype)], dim=1)


def breast_cancer(
    num_features: int | None = None,
    num_data: int | None = None,
    prior_scale: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> LogisticProblem:
    """The breast-cancer data, standardised, with an intercept column.

    Args:
        num_features: keep the first ``num_features`` of the 30 features (default all).
        num_data: keep the first ``num_data`` of the 569 rows (default all).
        prior_scale: standard deviation of the Gaussian prior on the weights.
        dtype: of ``X`` and ``y``.
    """
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = X[:num_data, :num_features]
    y = y[:num_data]
    if X.shape[1] < 1 or X.shape[0] < 2:
        raise ValueError(
            f"num_features={num_features} and num_data={num_data} leave a {X.shape} design; "
            "ask for at least 1 feature and 2 rows."
        )
    X = (X - X.mean(0)) / X.std(0)
    return LogisticProblem(
        "breast_cancer", _with_intercept(X, dtype), torch.as_tensor(y, dtype=dtype), prior_scale
    )


def ill_conditioned(
    num_data: int = 500,
    num_features: int = 8,
    correlation: float = 0.9995,
    prior_scale: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> LogisticProblem:
    """Strongly correlated features: ``x_j = √ρ z + √(1 − ρ) ε_j`` with ``z, ε_j ~ N(0, 1)``.

    The population covariance is ``(1 − ρ) I + ρ 11ᵀ`` with condition number
    ``(1 + (D − 1) ρ) / (1 − ρ)`` (≈ 1.6·10⁴ for the defaults); the sample value is checked to be
    ≥ 10⁴. Labels come from the model with weights ``w_true ~ N(0, I)``, seeded.

    Args:
        num_data, num_features: N and D (before the intercept column).
        correlation: ρ in (0, 1), the correlation between any two features.
        prior_scale: standard deviation of the Gaussian prior on the weights.
        seed: seed of the generator (data and labels).
        dtype: of ``X`` and ``y``.
    """
    if not 0.0 < correlation < 1.0 or num_features < 2:
        raise ValueError(
            f"correlation must lie in (0, 1) and num_features be ≥ 2; got {correlation}, "
            f"{num_features}."
        )
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((num_data, 1))
    eps = rng.standard_normal((num_data, num_features))
    X = np.sqrt(correlation) * z + np.sqrt(1.0 - correlation) * eps
    w_true = rng.standard_normal(num_features + 1)
    Xt = _with_intercept(X, torch.float64)
    p = torch.sigmoid(Xt @ torch.as_tensor(w_true))
    y = torch.as_tensor(rng.uniform(size=num_data) < p.numpy(), dtype=dtype)
    problem = LogisticProblem("ill_conditioned", Xt.to(dtype), y, prior_scale)
    if problem.condition_number < 1e4:
        raise ValueError(
            f"the generated features have condition number {problem.condition_number:.3g} < 1e4; "
            "raise correlation (closer to 1) or num_features."
        )
    return problem


def nuts_reference(
    problem: LogisticProblem, num_samples: int = 1000, warmup_steps: int = 500, seed: int = 0
) -> Tensor:
    """Posterior samples ``w [num_samples, D]`` from Pyro's NUTS (dense mass matrix adaptation).

    NUTS runs on :meth:`LogisticProblem.potential`, the same log-joint as :func:`logistic_model`
    written as a plain function (Pyro then skips its per-step model tracing, ~10× faster).
    """
    from pyro.infer import MCMC, NUTS

    pyro.set_rng_seed(seed)
    init = {"w": torch.zeros(problem.X.shape[1], dtype=problem.X.dtype, device=problem.X.device)}
    mcmc = MCMC(
        NUTS(potential_fn=problem.potential, full_mass=True),
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        initial_params=init,
        disable_progbar=True,
    )
    mcmc.run()
    return mcmc.get_samples()["w"]
