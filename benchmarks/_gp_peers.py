"""The methods the GP benchmarks compare, all behind one face (:class:`Method`).

Every method is set up from the same :class:`models._problem.Problem` — same data, ARD RBF
kernel with a scale, inducing inputs Z and initial hyperparameters — and trained by the same
loop (:func:`train`), so a difference in time is a difference between the libraries.

- ``natvi-ngd``: natvi SVGP in natural parameters, ``natvi.optim.NaturalGradient`` with the
  log-linear γ warm-up on q, Adam on the hyperparameters (Salimbeni et al. 2018).
- ``natvi-adam``: natvi SVGP in (mean, Cholesky) coordinates, Adam on everything.
- ``gpytorch-ngd``: GPyTorch ``ApproximateGP`` + ``VariationalStrategy`` +
  ``NaturalVariationalDistribution``, ``gpytorch.optim.NGD`` on q with the same γ schedule,
  Adam on the hyperparameters.
- ``gpytorch-adam``: GPyTorch with ``CholeskyVariationalDistribution``, Adam on everything.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import gpytorch
import torch
from torch import Tensor, nn

from models._problem import Problem, ard_kernel

__all__ = [
    "Method",
    "GPyTorchSVGP",
    "gpytorch_likelihood",
    "gpytorch_method",
    "natvi_method",
    "make_method",
    "train",
    "METHODS",
]

METHODS = ("natvi-ngd", "natvi-adam", "gpytorch-ngd", "gpytorch-adam")


@dataclass
class Method:
    """One trainable method on one problem.

    Attributes:
        name: e.g. ``"natvi-ngd"``.
        step: one training iteration; returns the total ELBO at the parameters it started from.
        heldout: mean held-out log predictive density per test point (not timed).
        model: the underlying model (for inspection).
    """

    name: str
    step: Callable[[], float]
    heldout: Callable[[], float]
    model: nn.Module


def warmup(t: int, gamma0: float, gamma1: float, K: int) -> float:
    """The log-linear warm-up ``γ_t = γ0 (γ1/γ0)^{min(t/K, 1)}`` (used for GPyTorch's NGD)."""
    return gamma0 * (gamma1 / gamma0) ** min(t / max(K, 1), 1.0)


class _PoissonExp(gpytorch.likelihoods._OneDimensionalLikelihood):
    """Poisson with the exp link (GPyTorch's own uses softplus), so both libraries fit one model."""

    def forward(self, function_samples: Tensor, *args, **kwargs):
        return torch.distributions.Poisson(function_samples.exp())


def gpytorch_likelihood(problem: Problem) -> gpytorch.likelihoods.Likelihood:
    """The GPyTorch likelihood matching ``problem.likelihood``, at the same initial parameters."""
    name, p = problem.likelihood, problem.likelihood_params
    dtype = problem.X.dtype
    if name == "bernoulli":
        lik = gpytorch.likelihoods.BernoulliLikelihood()  # probit link, like natvi's default
    elif name == "gaussian":
        lik = gpytorch.likelihoods.GaussianLikelihood()
        lik.noise = torch.tensor(p["noise"], dtype=dtype)
    elif name == "studentt":
        lik = gpytorch.likelihoods.StudentTLikelihood()
        lik.deg_free = torch.tensor(p["df"], dtype=dtype)
        lik.noise = torch.tensor(p["scale"] ** 2, dtype=dtype)  # GPyTorch's noise = scale²
    elif name == "poisson":
        lik = _PoissonExp()
    else:
        raise ValueError(
            f"no GPyTorch peer for likelihood {name!r}; "
            "use one of 'bernoulli', 'gaussian', 'studentt', 'poisson'."
        )
    return lik.to(dtype=dtype)


class GPyTorchSVGP(gpytorch.models.ApproximateGP):
    """A GPyTorch SVGP on the problem's Z, kernel and initial hyperparameters.

    Args:
        problem: the reference problem.
        distribution: ``"natural"`` (``NaturalVariationalDistribution``), ``"tril_natural"``
            or ``"cholesky"``.
        whiten: ``VariationalStrategy`` (whitened) or ``UnwhitenedVariationalStrategy``.
    """

    DISTRIBUTIONS = {
        "natural": gpytorch.variational.NaturalVariationalDistribution,
        "tril_natural": gpytorch.variational.TrilNaturalVariationalDistribution,
        "cholesky": gpytorch.variational.CholeskyVariationalDistribution,
    }

    def __init__(self, problem: Problem, distribution: str = "natural", whiten: bool = True):
        if distribution not in self.DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {sorted(self.DISTRIBUTIONS)}, got {distribution!r}."
            )
        Z = problem.Z.clone()
        q = self.DISTRIBUTIONS[distribution](Z.shape[0])
        strategy_cls = (
            gpytorch.variational.VariationalStrategy
            if whiten
            else gpytorch.variational.UnwhitenedVariationalStrategy
        )
        learn = bool(problem.settings.get("learn_inducing", True))
        strategy = strategy_cls(self, Z, q, learn_inducing_locations=learn)
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ZeroMean()
        self.covar_module = ard_kernel(problem.lengthscale.clone(), problem.outputscale)
        self.to(dtype=problem.X.dtype)

    def forward(self, x: Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def _gpytorch_heldout(model: GPyTorchSVGP, lik, problem: Problem) -> float:
    with torch.no_grad(), gpytorch.settings.num_likelihood_samples(64):
        f = model(problem.X_test)
        if problem.likelihood == "bernoulli":
            p = lik(f).probs.clamp(1e-12, 1 - 1e-12)
            y = problem.y_test
            return float((y * p.log() + (1 - y) * (1 - p).log()).mean())
        if problem.likelihood == "gaussian":
            var = f.variance + lik.noise
            r2 = (problem.y_test - f.mean).square()
            return float((-0.5 * (math.log(2 * math.pi) + var.log() + r2 / var)).mean())
        return float(lik.log_marginal(problem.y_test, f).mean())


def gpytorch_method(
    problem: Problem,
    kind: str,
    gamma: tuple[float, float, int] = (1e-4, 0.1, 5),
    adam_lr: float = 0.01,
    whiten: bool = True,
    distribution: str | None = None,
    learn_hyperparameters: bool = True,
) -> Method:
    """GPyTorch's NGD (``kind="ngd"``) or Adam-only (``kind="adam"``) on ``problem``.

    ``gamma = (γ0, γ1, K)`` is the NGD warm-up (set on NGD's param group each iteration).
    """
    if kind not in ("ngd", "adam"):
        raise ValueError(f"kind must be 'ngd' or 'adam', got {kind!r}.")
    distribution = distribution or ("natural" if kind == "ngd" else "cholesky")
    model = GPyTorchSVGP(problem, distribution, whiten)
    lik = gpytorch_likelihood(problem)
    N = problem.num_data
    mll = gpytorch.mlls.VariationalELBO(lik, model, num_data=N)
    hypers = [p for p in list(model.hyperparameters()) + list(lik.parameters())]
    hypers = [p for p in hypers if learn_hyperparameters and p.requires_grad]
    opts: list[torch.optim.Optimizer] = []
    if kind == "ngd":
        ngd = gpytorch.optim.NGD(model.variational_parameters(), num_data=N, lr=gamma[0])
        opts.append(ngd)
    else:
        hypers = hypers + list(model.variational_parameters())
        ngd = None
    if hypers:
        opts.append(torch.optim.Adam(hypers, lr=adam_lr))
    X, y = problem.X, problem.y
    t = [0]

    def step() -> float:
        if ngd is not None:
            ngd.param_groups[0]["lr"] = warmup(t[0], *gamma)
        for o in opts:
            o.zero_grad()
        loss = -mll(model(X), y)
        loss.backward()
        for o in opts:
            o.step()
        t[0] += 1
        return -float(loss.detach()) * N

    def heldout() -> float:
        return _gpytorch_heldout(model, lik, problem)

    return Method(f"gpytorch-{kind}", step, heldout, model)


def natvi_method(
    build: Callable[..., Problem],
    kind: str,
    gamma: tuple[float, float, int] = (1e-4, 0.1, 5),
    adam_lr: float = 0.01,
    safeguard: str = "backoff",
    hyper: str = "adam",
    **build_kw,
) -> Method:
    """natvi's natural gradients + Adam on hyperparameters (``"ngd"``) or Adam only (``"adam"``).

    ``build(**build_kw)`` makes the problem; ``"ngd"`` holds q in ``Natural()`` coordinates
    (unless ``build_kw`` names another parameterisation) and uses
    ``NaturalGradient.for_model(model, lr=LogLinearWarmup(*gamma))``; ``"adam"`` holds q in
    ``MeanCholesky()`` (the usual ordinary-gradient coordinates) and runs Adam on everything.
    """
    from natvi.optim import LogLinearWarmup, NaturalGradient
    from natvi.parameterizations import MeanCholesky, Natural

    if kind not in ("ngd", "adam"):
        raise ValueError(f"kind must be 'ngd' or 'adam', got {kind!r}.")
    build_kw.setdefault("parameterization", Natural() if kind == "ngd" else MeanCholesky())
    problem = build(**build_kw)
    model = problem.model
    if gamma[1] is None:  # the estimators' natgrad_lr=None: 1 if conjugate, else 0.5
        from natvi.estimators._base import natgrad_lr_for

        gamma = (gamma[0], natgrad_lr_for(model.likelihood, None), gamma[2])
    hypers = [p for p in model.hyperparameters() if p.requires_grad]
    opts: list[torch.optim.Optimizer] = []
    if kind == "ngd":
        opts.append(
            NaturalGradient.for_model(model, lr=LogLinearWarmup(*gamma), safeguard=safeguard)
        )
    else:
        hypers = hypers + list(model.variational_parameters())
    if hypers:
        opts.append(torch.optim.Adam(hypers, lr=adam_lr))
    X, y = problem.X, problem.y

    def heldout() -> float:
        with torch.no_grad():
            return float(model.predict_log_density(problem.X_test, problem.y_test).mean())

    if kind == "ngd" and hyper == "lbfgs" and hypers:
        return Method("natvi-ngd", _lbfgs_step(problem, opts[0], hypers, gamma[2]), heldout,
                      model)

    def step() -> float:
        for o in opts:
            o.zero_grad()
        elbo = model.elbo(X, y)
        (-elbo).backward()
        for o in opts:
            o.step()
        return float(elbo.detach())

    return Method(f"natvi-{kind}", step, heldout, model)


def _lbfgs_step(problem: Problem, ngd, hypers: list, warmup: int) -> Callable[[], float]:
    """natvi's estimator default: ``warmup`` natural steps, then per iteration one
    ``AlternatingLBFGS`` step on the hyperparameters whose trial points each get a natural step
    on q (as ``natvi.fit(hyper_optimizer="lbfgs")``, the last evaluation reused)."""
    from natvi._closures import evaluate, profiling_closure
    from natvi.optim.lbfgs import AlternatingLBFGS
    from natvi.strategy import Local

    model, X, y = problem.model, problem.X, problem.y
    params = [p for p in model.parameters() if p.requires_grad]
    lbfgs, state = AlternatingLBFGS(hypers), {"t": 0, "loss": None}

    def step() -> float:
        loss = state["loss"]
        if loss is None:
            loss = float(evaluate(Local(), model, X, y, None, params))
        if state["t"] < warmup:
            ngd.step()
            state["loss"] = None
        else:
            closure = profiling_closure(Local(), model, X, y, None, params, ngd, False)
            state["loss"] = lbfgs.step(closure, loss=loss)
        state["t"] += 1
        return -loss

    return step


def make_method(name: str, build: Callable[..., Problem], **kw) -> Method:
    """Any of :data:`METHODS` on ``build(**build_kw)``; ``kw`` as for the two factories."""
    library, kind = name.split("-")
    if library == "natvi":
        return natvi_method(build, kind, **kw)
    gp_kw = {k: kw.pop(k) for k in ("gamma", "adam_lr") if k in kw}
    return gpytorch_method(build(**kw), kind, **gp_kw)


def train(method: Method, iterations: int, eval_every: int = 0) -> list[dict]:
    """Run ``iterations`` steps; one row per iteration.

    Row ``t`` holds the ELBO at the parameters after ``t`` steps and the wall-clock seconds
    those ``t`` steps took (evaluation excluded); ``heldout`` every ``eval_every`` iterations
    and at the last (``nan`` elsewhere). A non-finite ELBO or an exception ends the run: the
    row says ``failed``.
    """
    rows, elapsed = [], 0.0
    for it in range(iterations):
        heldout = float("nan")
        if eval_every and it % eval_every == 0:
            heldout = method.heldout()
        t0 = time.perf_counter()
        try:
            elbo, failed = method.step(), ""
        except Exception as e:  # noqa: BLE001 - a failing method is a result, not a crash
            elbo, failed = float("nan"), f"{type(e).__name__}"
        step_time = time.perf_counter() - t0
        if not failed and not math.isfinite(elbo):
            failed = "non-finite ELBO"
        rows.append(
            {"iteration": it, "time": elapsed, "elbo": elbo, "heldout": heldout, "failed": failed}
        )
        elapsed += step_time
        if failed:
            break
    if eval_every and not rows[-1]["failed"]:
        rows[-1]["heldout"] = method.heldout()
    return rows
