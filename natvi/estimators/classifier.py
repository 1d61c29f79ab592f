"""``SparseGPClassifier``: a sparse variational GP classifier with scikit-learn conventions."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from natvi.estimators._base import TRAINING_DEFAULTS as _D
from natvi.estimators._base import SparseGPBase
from natvi.likelihoods.registry import by_name, check_targets, entry, names

__all__ = ["SparseGPClassifier"]


class SparseGPClassifier(ClassifierMixin, SparseGPBase):
    """Sparse variational GP classifier trained with natural gradients.

    Two classes: one latent GP ``f`` and ``p(y=1 | f) = Φ(f)`` (``link="probit"``) or the
    logistic sigmoid (``link="logit"``). ``C > 2`` classes (chosen from the labels; strings
    work): ``C`` latent GPs and a softmax (or ``multiclass="robustmax"``) likelihood.

    What ``fit`` does, with no settings to tune first:

    1. standardise the inputs (zero mean, unit variance per feature);
    2. place ``num_inducing`` inducing points at k-means centres of the inputs;
    3. an RBF kernel (or a Matérn) with one lengthscale and a learned scale (``ard=True``: one
       lengthscale per feature), a constant mean;
    4. ``method="natgrad"``: ``warmup_iter`` natural-gradient steps on q(u) alone (γ rising
       log-linearly from 1e-4 to ``natgrad_lr``; ``None``: 0.5, or 1 for a conjugate
       likelihood), then per iteration one L-BFGS step with a line search on kernel,
       likelihood and inducing inputs, every trial point of which first gets a natural step
       on q — so the hyperparameters follow the profiled objective ``max_q ELBO``
       (``hyper_optimizer="lbfgs"``, :class:`natvi.optim.lbfgs.AlternatingLBFGS`);
       ``hyper_optimizer="adam"``: Adam steps of ``learning_rate`` on the hyperparameters
       instead (Salimbeni, Eleftheriadis & Hensman 2018); ``method="adam"`` runs Adam at
       ``learning_rate`` on everything;
    5. stop once the best ELBO has gained less than ``tol`` nats per datum over the last
       ``n_iter_no_change`` iterations (:class:`natvi.stopping.ElboPlateau`), or at
       ``max_iter`` with a ``sklearn.exceptions.ConvergenceWarning``. The defaults
       (``natvi.estimators.TRAINING_DEFAULTS``) end by the rule on ordinary data.

    ``predict_proba`` integrates the likelihood over the posterior ``q(f)``
    (``p(y=1|x) = ∫ Φ(f) q(f) df = Φ(μ / √(1 + σ²))`` for the probit link), so a point far from
    the data gets a probability near the prior's instead of an over-confident one.

    Fitted attributes: ``classes_ [C]``, ``model_`` (:class:`natvi.gp.SVGP`), ``history_``
    (per-iteration ELBO and wall-clock), ``n_iter_``, ``elbo_`` (final total ELBO),
    ``inducing_points_ [M, D]``, ``x_mean_``, ``x_scale_``, ``n_features_in_``.

    Example:
        >>> from sklearn.datasets import load_breast_cancer
        >>> X, y = load_breast_cancer(return_X_y=True)
        >>> clf = natvi.SparseGPClassifier().fit(X, y)
        >>> clf.predict_proba(X[:2])            # [2, 2]
    """

    def __init__(
        self,
        num_inducing: int = 50,
        *,
        link: str = "probit",
        multiclass: str = "softmax",
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
        self.link = link
        self.multiclass = multiclass
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
        n = len(self.classes_)
        return 1 if n == 2 else n

    def _likelihood_name(self) -> str:
        """The likelihood trained: ``bernoulli`` for two classes, else ``multiclass``."""
        return "bernoulli" if len(self.classes_) <= 2 else self.multiclass

    def _make_likelihood(self):
        if len(self.classes_) == 2:
            return by_name("bernoulli", link=self.link)
        return by_name(self.multiclass, num_classes=len(self.classes_))

    def fit(self, X: Any, y: Any) -> SparseGPClassifier:
        """Fit to inputs ``X [N, D]`` and labels ``y [N]`` (any hashable labels); returns self."""
        self._check_settings()
        if self.link not in ("probit", "logit"):
            raise ValueError(f"link must be 'probit' or 'logit', got {self.link!r}.")
        multiclass = [n for n in names() if entry(n).task == "multiclass"]
        if self.multiclass not in multiclass:
            raise ValueError(f"multiclass must be one of {multiclass}, got {self.multiclass!r}.")
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        check_targets(self._likelihood_name(), y)
        dtype = self._torch_kw["dtype"] if len(self.classes_) == 2 else torch.long
        self._fit_model(X, torch.as_tensor(y_idx, dtype=dtype))
        return self

    def predict_latent(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of the posterior ``q(f)`` at ``X``: ``[N]`` each (two classes)
        or ``[N, C]``."""
        mean, var = self._latent(X)
        return mean.cpu().numpy(), var.cpu().numpy()

    def decision_function(self, X: Any) -> np.ndarray:
        """Log-odds of the integrated probabilities: ``log p₁ − log p₀`` ``[N]`` (two classes),
        ``log p`` ``[N, C]`` otherwise; ranks exactly as :meth:`predict_proba`."""
        proba = np.clip(self.predict_proba(X), np.finfo(np.float64).tiny, None)
        logp = np.log(proba)
        return logp[:, 1] - logp[:, 0] if len(self.classes_) == 2 else logp

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``[N, C]``, integrated over q(f) (columns follow ``classes_``).

        Two classes: ``∫ p(y=1|f) q(f) df`` by the likelihood (closed form for the probit link,
        Gauss–Hermite for the logit). More classes: the likelihood's own ``predict_proba``
        (softmax: Monte Carlo with ``2 × 500`` antithetic draws shared by every row, so a row's
        probabilities do not depend on the other rows; robustmax: 1-D quadrature).
        """
        Xs = self._validate_X(X)
        with torch.no_grad():
            mean, var = self.model_.predict_f(Xs)
            if len(self.classes_) == 2:
                p, _ = self.model_.likelihood.predict_mean_and_var(mean, var)
                p = p.cpu().numpy().astype(np.float64).reshape(-1)
                return np.column_stack([1.0 - p, p])
            p = self.model_.likelihood.predict_proba(mean, var)
        p = p.cpu().numpy().astype(np.float64)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class for each row of ``X``: ``[N]``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def prediction_table(self, X: Any) -> tuple[list[str], list[list[str]]]:
        """Header and rows for ``natvi predict``: the class, then one probability per class."""
        proba = self.predict_proba(X)
        labels = self.classes_[np.argmax(proba, axis=1)]
        header = ["prediction"] + [f"p_{c}" for c in self.classes_]
        rows = [[str(lab)] + [f"{v:.6g}" for v in row] for lab, row in zip(labels, proba)]
        return header, rows

    def _fitted_state(self) -> dict[str, Any]:
        state = super()._fitted_state()
        state["classes_"] = [c.item() if isinstance(c, np.generic) else c for c in self.classes_]
        return state

    def _restore(self, fitted: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> None:
        self.classes_ = np.asarray(fitted["classes_"])
        super()._restore(fitted, state_dict)
