"""``SparseGPRegressor`` (Gaussian or Student-t noise) and ``SparseGPCountRegressor`` (Poisson)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import RegressorMixin
from sklearn.utils.validation import validate_data

from natvi.estimators._base import TRAINING_DEFAULTS as _D
from natvi.estimators._base import SparseGPBase
from natvi.likelihoods.registry import by_name, check_targets

__all__ = ["SparseGPRegressor", "SparseGPCountRegressor"]

_SETTINGS_DOC = """
    Training is that of :class:`~natvi.SparseGPClassifier`: standardised inputs, k-means
    inducing points, a kernel with one lengthscale (``ard=True``: one per feature),
    natural-gradient steps with log-linear warm-up, then alternating with L-BFGS on the
    hyperparameters (``hyper_optimizer="lbfgs"``; ``"adam"``: Adam at ``learning_rate``)
    (``method="natgrad"``), or Adam on everything (``method="adam"``), stopping when the best
    ELBO gains less than ``tol`` nats per datum over ``n_iter_no_change`` iterations, or at
    ``max_iter`` with a ``ConvergenceWarning``.
"""


class _RegressorBase(RegressorMixin, SparseGPBase):
    """The constructor and prediction plumbing both regressors share; each subclass lists the
    likelihoods it trains in ``_LIKELIHOODS`` (name → initial parameters; the first is the
    default, used when ``likelihood=None``)."""

    _LIKELIHOODS: ClassVar[dict[str, dict[str, float]]]

    def __init__(
        self,
        num_inducing: int = 50,
        *,
        likelihood: str | None = None,
        kernel: str = "rbf",
        ard: bool = False,
        method: str = "natgrad",
        hyper_optimizer: str = _D["hyper_optimizer"],
        max_iter: int = _D["max_iter"],
        tol: float = _D["tol"],
        n_iter_no_change: int = _D["n_iter_no_change"],
        learning_rate: float = _D["learning_rate"],
        natgrad_lr: float | None = _D["natgrad_lr"],
        warmup_iter: int = _D["warmup_iter"],
        random_state: int | None = None,
        dtype: str = "float64",
        device: str | None = None,
        progress: bool = False,
    ) -> None:
        self.num_inducing = num_inducing
        self.likelihood = likelihood
        self.kernel = kernel
        self.ard = ard
        self.method = method
        self.hyper_optimizer = hyper_optimizer
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.learning_rate = learning_rate
        self.natgrad_lr = natgrad_lr
        self.warmup_iter = warmup_iter
        self.random_state = random_state
        self.dtype = dtype
        self.device = device
        self.progress = progress

    def _num_latent(self) -> int:
        return 1

    def _likelihood_name(self) -> str:
        """The likelihood trained: ``likelihood``, or the class's default for ``None``."""
        return next(iter(self._LIKELIHOODS)) if self.likelihood is None else self.likelihood

    def _make_likelihood(self):
        name = self._likelihood_name()
        return by_name(name, **self._LIKELIHOODS[name])

    def _check_likelihood(self) -> None:
        if self.likelihood is not None and self.likelihood not in self._LIKELIHOODS:
            raise ValueError(
                f"likelihood must be one of {list(self._LIKELIHOODS)} (or None: "
                f"{next(iter(self._LIKELIHOODS))!r}) for {type(self).__name__}, got "
                f"{self.likelihood!r}."
            )

    def _predict_mean_var(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        Xs = self._validate_X(X)
        with torch.no_grad():
            mean, var = self.model_.predict_y(Xs)
        return mean.reshape(-1).cpu().numpy(), var.reshape(-1).cpu().numpy()

    def prediction_table(self, X: Any) -> tuple[list[str], list[list[str]]]:
        """Header and rows for ``natvi predict``: predictive mean and standard deviation."""
        mean, std = self.predict(X, return_std=True)
        return ["mean", "std"], [[f"{m:.6g}", f"{s:.6g}"] for m, s in zip(mean, std)]


class SparseGPRegressor(_RegressorBase):
    """Sparse variational GP regression with Gaussian or Student-t (robust) noise.

    ``y`` is standardised internally; predictions are returned in the original units. The
    noise starts at 0.1 of the variance of y (Student-t: scale 0.3, 3 degrees of freedom) and
    is learned.
    ``predict(X, return_std=True)`` gives the predictive mean and standard deviation of y
    (noise included; for Student-t noise the standard deviation of the predictive).
    ``likelihood``: ``"gaussian"`` (the default, also for ``None``) or ``"studentt"``.
    """ + _SETTINGS_DOC + """
    Example:
        >>> reg = natvi.SparseGPRegressor(likelihood="studentt").fit(X, y)
        >>> mean, std = reg.predict(X_test, return_std=True)     # [N], [N]
    """

    _LIKELIHOODS = {"gaussian": {"noise": 0.1}, "studentt": {"scale": 0.3}}

    def fit(self, X: Any, y: Any) -> SparseGPRegressor:
        """Fit to ``X [N, D]`` and real targets ``y [N]``; returns self."""
        self._check_settings()
        self._check_likelihood()
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        self.y_mean_ = float(y.mean())
        scale = float(y.std())
        self.y_scale_ = scale if scale > 0 else 1.0
        y_std = (y - self.y_mean_) / self.y_scale_
        self._fit_model(X, torch.as_tensor(y_std, dtype=self._torch_kw["dtype"]))
        return self

    def predict(self, X: Any, return_std: bool = False):
        """Predictive mean ``[N]`` (and standard deviation ``[N]`` with ``return_std=True``)."""
        mean, var = self._predict_mean_var(X)
        mean = mean * self.y_scale_ + self.y_mean_
        if return_std:
            return mean, np.sqrt(np.maximum(var, 0.0)) * self.y_scale_
        return mean

    def _fitted_state(self) -> dict[str, Any]:
        return {**super()._fitted_state(), "y_mean_": self.y_mean_, "y_scale_": self.y_scale_}

    def _restore(self, fitted: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> None:
        self.y_mean_, self.y_scale_ = fitted["y_mean_"], fitted["y_scale_"]
        super()._restore(fitted, state_dict)


class SparseGPCountRegressor(_RegressorBase):
    """Sparse variational GP regression for counts: ``y ~ Poisson(exp f)``.

    The GP's constant mean starts at ``log(mean(y))``; ``predict`` returns the predictive mean
    ``E[y] = E_q[exp f] = exp(μ + σ²/2)``. ``likelihood`` is ``None`` or ``"poisson"`` (the
    constructor is the one both regressors share).
    """ + _SETTINGS_DOC + """
    Example:
        >>> reg = natvi.SparseGPCountRegressor().fit(X, counts)
        >>> reg.predict(X_test)           # expected counts [N]
    """

    _LIKELIHOODS = {"poisson": {}}

    def fit(self, X: Any, y: Any) -> SparseGPCountRegressor:
        """Fit to ``X [N, D]`` and non-negative integer counts ``y [N]``; returns self."""
        self._check_settings()
        self._check_likelihood()
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        check_targets(self._likelihood_name(), y, suggest="SparseGPRegressor(likelihood={!r})")
        self._fit_model(X, torch.as_tensor(y, dtype=self._torch_kw["dtype"]),
                        mean_init=math.log(max(float(y.mean()), 1e-3)))
        return self

    def predict(self, X: Any, return_std: bool = False):
        """Expected counts ``[N]`` (and predictive standard deviation with ``return_std``)."""
        mean, var = self._predict_mean_var(X)
        if return_std:
            return mean, np.sqrt(np.maximum(var, 0.0))
        return mean
