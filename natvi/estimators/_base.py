"""What the sparse-GP estimators share: settings, standardisation, k-means inducing points, the
model, training with a stopping rule, and saving to a ``weights_only`` file."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import gpytorch
import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from natvi._io import atomic_torch_save

__all__ = ["SparseGPBase", "kmeans_inducing_points", "FORMAT", "TRAINING_DEFAULTS"]

FORMAT = "natvi.estimator/1"
"""The ``format`` entry of a saved estimator file."""

TRAINING_DEFAULTS: dict[str, Any] = {
    "max_iter": 2000,
    "tol": 5e-4,
    "n_iter_no_change": 20,
    "hyper_optimizer": "lbfgs",
    "learning_rate": 0.05,
    "natgrad_lr": None,
    "warmup_iter": 5,
}
"""The estimators' (and ``natvi fit``'s) training settings, chosen by measuring time to a
converged model (``python -m benchmarks wallclock``). After ``warmup_iter`` natural steps on q
alone (γ rising log-linearly from 1e-4), each iteration takes one L-BFGS step on the
hyperparameters whose every trial point first gets a natural step on q
(:class:`natvi.optim.lbfgs.AlternatingLBFGS`: a line search on the profiled objective
``max_q ELBO``); γ is ``natgrad_lr``, or with ``None`` 1 for a conjugate (Gaussian) likelihood —
the exact optimum of q in one step — and 0.5 otherwise. ``hyper_optimizer="adam"`` takes Adam
steps of ``learning_rate`` on the hyperparameters instead (the recipe of Salimbeni et al. 2018;
also what ``method="adam"`` uses on everything). The run ends when the best ELBO has gained less
than ``tol`` nats per datum over ``n_iter_no_change`` iterations
(:class:`natvi.stopping.ElboPlateau`), well before ``max_iter`` on ordinary data. Reaching
``max_iter`` raises a ``ConvergenceWarning``."""

NATGRAD_LR = {"conjugate": 1.0, "other": 0.5}
"""``natgrad_lr=None``: γ after the warm-up, by whether the likelihood is conjugate."""


def natgrad_lr_for(likelihood: Any, natgrad_lr: float | None) -> float:
    """``natgrad_lr``, or for ``None`` the default for ``likelihood`` (:data:`NATGRAD_LR`)."""
    if natgrad_lr is not None:
        return float(natgrad_lr)
    return NATGRAD_LR["conjugate" if getattr(likelihood, "conjugate", False) else "other"]


_KERNELS = ("rbf", "matern12", "matern32", "matern52")
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def kmeans_inducing_points(X: np.ndarray, M: int, seed: int) -> np.ndarray:
    """``[min(M, #distinct rows), D]`` inducing inputs: k-means centres of ``X [N, D]``.

    With at most ``M`` distinct rows the rows themselves are used. k-means centres spread the
    inducing points over where the data lie, a strong start for a sparse GP (Hensman et al.
    2015 do the same); they are then learned with the hyperparameters.
    """
    distinct = np.unique(X, axis=0)
    if len(distinct) <= M:
        return distinct
    km = KMeans(n_clusters=M, n_init=1, random_state=seed).fit(X)
    return km.cluster_centers_


def _mean_and_scale(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation ``[D]`` (1 for a constant feature). Features so
    large that their squares overflow (|x| ≳ 1e154) are first divided by their largest
    magnitude; a feature whose mean or scale still is not finite is a ``ValueError``."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean, scale = X.mean(axis=0), X.std(axis=0)
        bad = ~(np.isfinite(mean) & np.isfinite(scale))
        if bad.any():
            big = np.max(np.abs(X[:, bad]), axis=0)
            mean[bad] = (X[:, bad] / big).mean(axis=0) * big
            scale[bad] = (X[:, bad] / big).std(axis=0) * big
    bad = ~(np.isfinite(mean) & np.isfinite(scale))
    if bad.any():
        cols = np.flatnonzero(bad)
        raise ValueError(
            f"cannot standardise X: feature(s) {cols.tolist()} hold values up to "
            f"{np.max(np.abs(X[:, cols])):.3g}, whose mean or spread overflows float64; rescale "
            "them (e.g. divide by a power of ten) or check them for errors."
        )
    return mean, np.where(scale > 0, scale, 1.0)


class SparseGPBase(BaseEstimator):
    """Shared machinery of :class:`~natvi.SparseGPClassifier` and the regressors.

    Subclasses define ``_make_likelihood(n_outputs)``, ``_num_latent()`` and the prediction
    methods; ``fit`` prepares ``y`` and calls :meth:`_fit_model`.
    """

    def _check_settings(self) -> None:
        if self.kernel not in _KERNELS:
            raise ValueError(f"kernel must be one of {_KERNELS}, got {self.kernel!r}.")
        if not isinstance(self.ard, (bool, np.bool_)):
            raise ValueError(f"ard must be True or False, got {self.ard!r}.")
        if self.method not in ("natgrad", "adam"):
            raise ValueError(f"method must be 'natgrad' or 'adam', got {self.method!r}.")
        if self.hyper_optimizer not in ("lbfgs", "adam"):
            raise ValueError(
                f"hyper_optimizer must be 'lbfgs' or 'adam', got {self.hyper_optimizer!r}.")
        for name in ("num_inducing", "max_iter", "n_iter_no_change", "warmup_iter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("tol", "learning_rate", "natgrad_lr"):
            value = getattr(self, name)
            if name == "natgrad_lr" and value is None:
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (
                name != "tol" and value == 0
            ):
                raise ValueError(f"{name} must be a positive number, got {value!r}.")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'float64' or 'float32', got {self.dtype!r}.")

    # ---------------------------------------------------------------- inputs
    @property
    def _torch_kw(self) -> dict[str, Any]:
        return {"dtype": _DTYPES[self.dtype], "device": torch.device(self.device or "cpu")}

    def _standardize(self, X: np.ndarray) -> torch.Tensor:
        """``(X − x_mean_) / x_scale_`` as a tensor; ``ValueError`` if that is not finite."""
        with np.errstate(over="ignore", invalid="ignore"):
            Xs = torch.as_tensor((X - self.x_mean_) / self.x_scale_, **self._torch_kw)
        if not bool(torch.isfinite(Xs).all()):
            cols = np.flatnonzero(~torch.isfinite(Xs).all(0).cpu().numpy())
            raise ValueError(
                f"standardising X gave non-finite values in feature(s) {cols.tolist()} (values "
                f"up to {np.max(np.abs(X[:, cols])):.3g} against a training scale of "
                f"{self.x_scale_[cols].min():.3g}, in {self.dtype}); rescale those features "
                "(e.g. divide by a power of ten) or check them for errors."
            )
        return Xs

    def _validate_X(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self._standardize(X)

    # ---------------------------------------------------------------- model
    def _make_kernel(self, num_dims: int) -> gpytorch.kernels.Kernel:
        """One lengthscale (default), or one per input dimension with ``ard=True``: ML-II
        pushes the lengthscales of uninformative inputs slowly towards infinity, so an ARD
        kernel trains for longer and, on few data, over-fits (breast cancer: 30 features, 398
        rows)."""
        ard = {"ard_num_dims": num_dims} if self.ard else {}
        if self.kernel == "rbf":
            base = gpytorch.kernels.RBFKernel(**ard)
        else:
            nu = {"matern12": 0.5, "matern32": 1.5, "matern52": 2.5}[self.kernel]
            base = gpytorch.kernels.MaternKernel(nu=nu, **ard)
        base.lengthscale = math.sqrt(num_dims)
        return gpytorch.kernels.ScaleKernel(base)

    def _build_model(self, Z: torch.Tensor, mean_init: float = 0.0) -> torch.nn.Module:
        from natvi.gp import SVGP
        from natvi.parameterizations import MeanCholesky, Natural

        mean = gpytorch.means.ConstantMean()
        mean.constant.data.fill_(mean_init)
        model = SVGP(
            kernel=self._make_kernel(Z.shape[-1]),
            likelihood=self._make_likelihood(),
            inducing_points=Z,
            num_latent=self._num_latent(),
            mean=mean,
            parameterization=Natural() if self.method == "natgrad" else MeanCholesky(),
        )
        return model.to(**self._torch_kw)

    def _fit_model(self, X: np.ndarray, y: torch.Tensor, mean_init: float = 0.0) -> None:
        """Standardise ``X [N, D]``, place inducing points, build the SVGP and train it."""
        self._check_settings()
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(2**31 - 1))
        self.x_mean_, self.x_scale_ = _mean_and_scale(X)
        Xs = self._standardize(X)
        Z = kmeans_inducing_points(Xs.cpu().numpy(), int(self.num_inducing), seed)
        torch.manual_seed(seed)
        self.model_ = self._build_model(torch.as_tensor(Z, **self._torch_kw), mean_init)
        self._train(Xs, y.to(self._torch_kw["device"]), seed)

    def _train(self, X: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        """``warmup_iter`` natural steps on q, then natural steps alternating with L-BFGS (or
        Adam) on the hyperparameters — or Adam on everything (q included) at
        ``learning_rate``; stop on the ELBO plateau."""
        from natvi.fit import fit
        from natvi.optim.schedules import LogLinearWarmup
        from natvi.stopping import ElboPlateau

        natgrad = self.method == "natgrad"
        warmup = int(self.warmup_iter) if natgrad else 0
        stop = ElboPlateau(tol=float(self.tol), n_iter_no_change=int(self.n_iter_no_change),
                           num_data=int(X.shape[0]), start=warmup)
        if natgrad:
            gamma = natgrad_lr_for(self.model_.likelihood, self.natgrad_lr)
            lr = LogLinearWarmup(1e-4, gamma, warmup)
            hyper = self.hyper_optimizer
        else:
            lr, hyper = float(self.learning_rate), "adam"
        result = fit(
            self.model_, X, y, method=self.method, iterations=int(self.max_iter), lr=lr,
            hyper_optimizer=hyper, hyper_lr=self.learning_rate,
            hyper_warmup=warmup if hyper == "lbfgs" else 0, stop_when=stop,
            progress=bool(self.progress), seed=seed,
            callback=getattr(self, "_fit_callback", None),  # set by natvi demo/compare only
        )
        self.history_ = result.history
        self.n_iter_ = len(result.history)
        if not stop.stopped:
            _warn_not_converged(self, stop)
        with torch.no_grad():
            self.elbo_ = float(self.model_.elbo(X, y))

    @property
    def inducing_points_(self) -> np.ndarray:
        """``[M, D]`` learned inducing inputs in the units of the training inputs."""
        check_is_fitted(self, "model_")
        Z = self.model_.inducing_points.detach().cpu().numpy()
        return Z * self.x_scale_ + self.x_mean_

    def _latent(self, X: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(f) at ``X``: ``[N]`` each, or ``[N, L]`` for L latents."""
        Xs = self._validate_X(X)
        with torch.no_grad():
            return self.model_.predict_f(Xs)

    # ---------------------------------------------------------------- saving
    def _fitted_state(self) -> dict[str, Any]:
        """Plain data (lists, strings, numbers) that, with the model's state dict, restores
        the fitted estimator; subclasses extend it."""
        return {
            "x_mean_": self.x_mean_.tolist(),
            "x_scale_": self.x_scale_.tolist(),
            "n_features_in_": int(self.n_features_in_),
            "num_inducing_fitted": int(self.model_.inducing_points.shape[-2]),
            "n_iter_": int(self.n_iter_),
            "elbo_": float(self.elbo_),
            "feature_names_": [str(n) for n in getattr(self, "feature_names_", [])],
        }

    def _restore(self, fitted: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> None:
        self.x_mean_ = np.asarray(fitted["x_mean_"], dtype=np.float64)
        self.x_scale_ = np.asarray(fitted["x_scale_"], dtype=np.float64)
        self.n_features_in_ = fitted["n_features_in_"]
        self.n_iter_ = fitted["n_iter_"]
        self.elbo_ = fitted["elbo_"]
        self.feature_names_ = list(fitted["feature_names_"])
        Z = torch.zeros(fitted["num_inducing_fitted"], self.n_features_in_, **self._torch_kw)
        self.model_ = self._build_model(Z)
        self.model_.load_state_dict(state_dict)

    def save(self, path: str | Path) -> None:
        """Save the fitted estimator as a state dict plus plain metadata.

        The file loads with ``torch.load(path, weights_only=True)`` (no pickled objects); use
        :func:`natvi.estimators.load` to get the estimator back. The file is written atomically:
        if writing fails (e.g. a full disk), a previous file at ``path`` is left intact and
        :class:`natvi._io.WriteError` (an ``OSError``) names the file and the cause.
        """
        check_is_fitted(self, "model_")
        params = self.get_params()
        for name, value in params.items():
            if not (value is None or isinstance(value, (bool, int, float, str))):
                raise ValueError(
                    f"cannot save: parameter {name}={value!r} is not a plain number or string; "
                    "pass an integer random_state."
                )
        atomic_torch_save(
            {
                "format": FORMAT,
                "estimator": type(self).__name__,
                "params": params,
                "fitted": self._fitted_state(),
                "state_dict": {k: v.cpu() for k, v in self.model_.state_dict().items()},
            },
            Path(path),
        )


def _uses_lbfgs(est: SparseGPBase) -> bool:
    """Whether ``est`` trains its hyperparameters by L-BFGS (natural steps on q)."""
    return est.method == "natgrad" and est.hyper_optimizer == "lbfgs"


def _warn_not_converged(est: SparseGPBase, stop) -> None:
    gain = stop.last_gain
    if not math.isfinite(gain):
        state, advice = "too few iterations for the stopping rule to judge", "raise max_iter"
    elif gain < 0:
        state = (f"its best over the last {stop.n_iter_no_change} iterations is {-gain:.2g} nats "
                 "per datum below its earlier best: the steps oscillate")
        advice = ("lower natgrad_lr" if _uses_lbfgs(est) else
                  "lower learning_rate (the hyperparameters' step) or natgrad_lr")
    else:
        state = (f"the best ELBO still gained {gain:.2g} nats per datum over the last "
                 f"{stop.n_iter_no_change} iterations")
        advice = ("raise max_iter, or raise tol to accept a looser optimum" if _uses_lbfgs(est) else
                  "raise max_iter, or raise learning_rate (the hyperparameters' step) for faster "
                  "progress, or use hyper_optimizer='lbfgs', or raise tol to accept a looser "
                  "optimum")
    warnings.warn(
        f"{type(est).__name__} reached max_iter={est.max_iter} before the ELBO settled "
        f"({state}; tol={est.tol}). The model may be under-trained: {advice}.",
        ConvergenceWarning,
        stacklevel=5,
    )
