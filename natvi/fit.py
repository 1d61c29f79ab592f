"""``natvi.fit``: the training loop — natural steps on q alternating with Adam on hyperparameters.

One iteration (Salimbeni, Eleftheriadis & Hensman 2018, "Natural Gradients in Practice"):

1. ``L = −ELBO(X_b, y_b)`` (a minibatch scaled by N/B) and one backward pass, which gives the
   gradients of q's coordinates ξ *and* of the hyperparameters;
2. a natural step on every q (:class:`natvi.optim.NaturalGradient`, safeguarded);
3. an Adam step on the hyperparameters.

The hyperparameter gradient is **not** recomputed between 2 and 3 by default: both steps use
the gradient at the start of the iteration, so one forward/backward pass serves both and an
iteration costs about what an Adam iteration costs (the point of the comparison with
ordinary-gradient VI). Hyperparameters then lag q by one step, which with Adam's small steps
changes the trajectory little and not the fixed point (at a fixed point both gradients vanish).
``recompute_grad=True`` evaluates the gradient again at the new q before the Adam step — the
exact alternation, at twice the cost.

``method="adam"`` runs ordinary-gradient VI in the same loop: Adam on ξ and on the
hyperparameters — the baseline natvi's natural steps are compared with.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from natvi._closures import checking_closure, evaluate, profiling_closure
from natvi._history import FitResult, History
from natvi._io import atomic_torch_save, check_output_file, load_torch_file
from natvi._threads import check_threads, limit_threads
from natvi._validation import check_finite
from natvi.model import check_model
from natvi.optim.lbfgs import AlternatingLBFGS
from natvi.optim.natural_gradient import NaturalGradient
from natvi.optim.safeguards import Safeguard
from natvi.optim.schedules import check_lr
from natvi.strategy import Strategy, resolve
from natvi.variational import GaussianVariational

__all__ = ["fit", "FitResult", "History"]

METHODS = ("natgrad", "adam")
HYPER_OPTIMIZERS = ("adam", "lbfgs")
_CHECKPOINT_VERSION = 1


def _check_data(model: nn.Module, X: Any, y: Any) -> tuple[Tensor, Tensor]:
    if not torch.is_tensor(X) or not torch.is_tensor(y):
        raise ValueError(
            f"X and y must be torch tensors, got {type(X).__name__} and {type(y).__name__}; "
            "convert with torch.as_tensor(..., dtype=torch.float64)."
        )
    check_finite("X", X)
    check_finite("y", y)
    if X.dim() != 2:
        raise ValueError(f"X must have shape [N, D]; got {tuple(X.shape)}.")
    if y.dim() < 1 or y.shape[0] != X.shape[0]:
        raise ValueError(
            f"shape mismatch: X has {X.shape[0]} rows but y has shape {tuple(y.shape)}; "
            "pass one target per row of X."
        )
    check_model(model)
    return X, y


def _check_adam_coordinates(model: nn.Module) -> None:
    for q in model.modules():
        if isinstance(q, GaussianVariational) and q.parameterization.constrained:
            raise ValueError(
                f"method='adam' takes ordinary gradient steps, which leave the domain of "
                f"{q.parameterization!r} coordinates (a precision or covariance must stay positive "
                "definite); build the model with parameterization=MeanCholesky() (or "
                "NaturalTril(), DiagMeanLogScale()) for the Adam baseline."
            )


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


class _Batches:
    """Minibatch indices: a fresh random permutation per epoch (state is checkpointable)."""

    def __init__(self, N: int, batch_size: int | None, seed: int, device: torch.device) -> None:
        self.N, self.B = N, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(N, generator=self.generator)
        self.pos = 0
        self.device = device

    def next(self) -> Tensor | None:
        if self.B is None:
            return None
        if self.pos + self.B > self.N:
            self.perm = torch.randperm(self.N, generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.B]
        self.pos += self.B
        return idx.to(self.device)

    def state(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm, "pos": self.pos}

    def load(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"], int(state["pos"])


def _hyper_optimizer(model: nn.Module, hyper_optimizer: Any, hyper_lr: float):
    params = [p for p in model.hyperparameters() if p.requires_grad]
    if isinstance(hyper_optimizer, torch.optim.Optimizer):
        return hyper_optimizer
    if isinstance(hyper_optimizer, str) and hyper_optimizer not in HYPER_OPTIMIZERS:
        raise ValueError(f"unknown hyper_optimizer {hyper_optimizer!r}; choose one of "
                         f"{', '.join(HYPER_OPTIMIZERS)}, a torch.optim.Optimizer or a factory.")
    if not params:
        return None
    if hyper_optimizer is None or hyper_optimizer == "adam":
        return torch.optim.Adam(params, lr=check_lr("hyper_lr", hyper_lr))
    if hyper_optimizer == "lbfgs":
        return AlternatingLBFGS(params)
    if callable(hyper_optimizer):
        return hyper_optimizer(params)
    raise ValueError(
        "hyper_optimizer must be None or 'adam' (Adam with hyper_lr), 'lbfgs', a "
        "torch.optim.Optimizer, or a callable params -> Optimizer; got "
        f"{type(hyper_optimizer).__name__}."
    )


_CHECKPOINT_KEYS = ("iteration", "elapsed", "model", "q_optimizer", "hyper_optimizer", "batches",
                    "rng", "history")
_RESUME_ADVICE = "delete the file (or pass resume=False) to start afresh."


def _load_checkpoint(path: Path, method: str) -> dict:
    """The checkpoint at ``path``, checked: ``ValueError`` naming the file if it is corrupt,
    truncated, foreign, incomplete or written by another method."""
    state = load_torch_file(path, "natvi checkpoint", _RESUME_ADVICE)
    if state.get("version") != _CHECKPOINT_VERSION or "method" not in state:
        raise ValueError(
            f"{path}: not a natvi checkpoint (version {state.get('version')!r}, expected "
            f"{_CHECKPOINT_VERSION}); {_RESUME_ADVICE}"
        )
    if state["method"] != method:
        raise ValueError(
            f"checkpoint {path} was written by method={state.get('method')!r}; resume with "
            "the same method, or delete the file to start afresh."
        )
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(
            f"{path}: the checkpoint is incomplete (no {', '.join(missing)}); {_RESUME_ADVICE}"
        )
    return state


def fit(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    method: str = "natgrad",
    iterations: int = 100,
    lr: float | Callable[[int], float] | None = None,
    safeguard: str | Safeguard | None = "backoff",
    hyper_optimizer: Any = None,
    hyper_lr: float = 1e-2,
    hyper_warmup: int = 0,
    batch_size: int | None = None,
    recompute_grad: bool = False,
    callback: Callable[[nn.Module, History], float | None] | None = None,
    stop_when: Callable[[History], bool] | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    resume: bool = False,
    seed: int = 0,
    strategy: Strategy | None = None,
    threads: int | None = 1,
    distributed: bool | None = None,
) -> FitResult:
    """Train a variational model by natural gradients on q and Adam on the hyperparameters.

    Args:
        model: a natvi model: ``elbo(X, y, num_data=None)`` (total ELBO), ``hyperparameters()``,
            ``variational_parameters()``, q held in :class:`natvi.GaussianVariational` modules.
            Hyperparameters with ``requires_grad=False`` stay fixed.
        X: inputs ``[N, D]``; y: targets ``[N, ...]``.
        method: ``"natgrad"`` (natural steps on q) or ``"adam"`` (Adam on everything).
        iterations: total number of iterations (including those of a resumed checkpoint).
        lr: step size for q: natgrad — a float or a schedule ``step -> γ`` (default 1.0, the
            conjugate optimum in one step; see :mod:`natvi.optim.schedules` for the warm-up);
            adam — Adam's learning rate (default 1e-2).
        safeguard: for natural steps, see :mod:`natvi.optim.safeguards`. Outside full natural
            coordinates (and for data below float64) each step is verified by one extra forward
            pass: the default back-off rejects a step that lowers the ELBO (or, below float64,
            that the model cannot evaluate).
        hyper_optimizer: ``None`` or ``"adam"`` (Adam with ``hyper_lr``); ``"lbfgs"``
            (:class:`natvi.optim.lbfgs.AlternatingLBFGS`, ``method="natgrad"`` and full batch
            only: after ``hyper_warmup`` natural steps, each iteration is one quasi-Newton step
            with a line search on the hyperparameters, every trial point of which resets q and
            takes one natural step on q there — the profiled objective ``max_q ELBO``; its last
            evaluation is the next iteration's, so an iteration costs about two of Adam's and
            far fewer are needed); a
            ``torch.optim.Optimizer`` over the hyperparameters, or a factory
            ``params -> Optimizer``.
        hyper_lr: learning rate of the default hyperparameter Adam.
        hyper_warmup: iterations before the first hyperparameter step, so that q first comes
            near its optimum (default 0).
        batch_size: minibatch size B (``None``: full batch); the ELBO is scaled by N/B.
        recompute_grad: recompute the hyperparameter gradient after the natural step (see the
            module docstring).
        callback: ``callback(model, history) -> float | None`` after each iteration, e.g. a
            held-out metric (stored in ``history.metric``; its time is not counted).
        stop_when: ``stop_when(history) -> bool`` after each iteration; True ends the run.
        progress: show a tqdm progress bar.
        checkpoint: file to save the full training state to every ``checkpoint_every``
            iterations and at the end (``torch.save``; loads with ``weights_only=True``).
        resume: continue from ``checkpoint`` if it exists — the same trajectory as an
            uninterrupted run (model, optimisers, schedule position, minibatch order and the
            global RNG are restored).
        seed: seeds the minibatch order.
        strategy: how this process sees the data (:mod:`natvi.strategy`): ``None`` — the
            strategy in force (:class:`~natvi.strategy.Local`, one process, unless inside
            :func:`natvi.strategy.use` / :func:`natvi.distributed.data_parallel`);
            :class:`natvi.distributed.DataParallel` — this process is one rank of a
            ``torch.distributed`` job and ``X, y`` are its shard, gradients and the ELBO are
            all-reduced and ``batch_size`` is per rank.
        threads: torch intra-op threads while training (default 1, restored afterwards;
            ``None`` leaves torch's setting alone). Small GP problems are dispatch-bound and one
            thread is fastest on a shared machine; see :mod:`natvi._threads`.
        distributed: deprecated; ``True`` is ``strategy=natvi.distributed.DataParallel()``,
            ``False`` is ``strategy=natvi.strategy.Local()``.

    Returns:
        :class:`FitResult` with ``.history`` (ELBO, time, lr, events, metric per iteration).

    Example:
        >>> result = natvi.fit(model, X, y, iterations=50, lr=LogLinearWarmup(1e-4, 1.0, K=5))
        >>> result.history.elbo[-1]
    """
    strategy = resolve(strategy, distributed)
    X, y = _check_data(model, X, y)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    iterations = _positive_int("iterations", iterations, minimum=0)
    threads = check_threads(threads)
    checkpoint_every = _positive_int("checkpoint_every", checkpoint_every)
    hyper_warmup = _positive_int("hyper_warmup", hyper_warmup, minimum=0)
    if batch_size is not None:
        batch_size = _positive_int("batch_size", batch_size)
    X, y = strategy.prepare(model, X, y, batch_size=batch_size, checkpoint=checkpoint)
    progress = progress and strategy.is_main
    N = X.shape[0]
    if batch_size is not None:
        if batch_size > N:
            raise ValueError(f"batch_size {batch_size} exceeds the number of data N = {N}.")
        if batch_size == N:
            batch_size = None
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=<path> to resume from.")
    if checkpoint is not None:
        check_output_file(checkpoint, "checkpoint")

    if method == "natgrad":
        q_opt = NaturalGradient.for_model(model, lr=1.0 if lr is None else lr, safeguard=safeguard)
        # Verify each step with one forward pass where the plain step can overshoot (outside
        # full natural coordinates) or where rounding can break the model's own factorisations
        # although q passed the safeguard's checks (below float64).
        loss_check = X.dtype != torch.float64 or any(
            q_opt.safeguard.is_monotone(g["parameterization"]) for g in q_opt.param_groups
        )
    else:
        _check_adam_coordinates(model)
        adam_lr = 1e-2 if lr is None else lr
        if callable(adam_lr):
            raise ValueError("method='adam' takes a float lr; schedules are for natural steps.")
        q_opt = torch.optim.Adam(list(model.variational_parameters()), lr=check_lr("lr", adam_lr))
        loss_check = False
    h_opt = _hyper_optimizer(model, hyper_optimizer, hyper_lr)
    line_search = isinstance(h_opt, AlternatingLBFGS)
    if line_search and method != "natgrad":
        raise ValueError("hyper_optimizer='lbfgs' re-optimises q by natural steps at each trial "
                         "point; use it with method='natgrad' (Adam baseline: 'adam').")
    if line_search and batch_size is not None:
        raise ValueError(
            "hyper_optimizer='lbfgs' needs the full-batch ELBO (its line search and curvature "
            "pairs are defeated by minibatch noise); use batch_size=None, or "
            "hyper_optimizer='adam' for minibatches."
        )
    grad_params = [p for p in model.parameters() if p.requires_grad]
    batches = _Batches(N, batch_size, seed, X.device)
    history, start, elapsed = History(), 0, 0.0

    path = Path(checkpoint) if checkpoint is not None else None
    if resume and path is not None and path.exists():
        state = _load_checkpoint(path, method)
        backup = {k: v.clone() for k, v in model.state_dict().items()}
        rng = torch.get_rng_state()
        try:
            model.load_state_dict(state["model"])
            q_opt.load_state_dict(state["q_optimizer"])
            if h_opt is not None:
                h_opt.load_state_dict(state["hyper_optimizer"])
            batches.load(state["batches"])
            torch.set_rng_state(state["rng"])
            history = History(**state["history"])
            start, elapsed = int(state["iteration"]), float(state["elapsed"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as err:
            model.load_state_dict(backup)
            torch.set_rng_state(rng)
            raise ValueError(
                f"{path}: the checkpoint does not match this model and optimiser "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                "resume with the same model and settings, or "
                f"{_RESUME_ADVICE}"
            ) from None

    def save(iteration: int) -> None:
        atomic_torch_save({
            "version": _CHECKPOINT_VERSION, "method": method, "iteration": iteration,
            "elapsed": elapsed, "model": model.state_dict(), "q_optimizer": q_opt.state_dict(),
            "hyper_optimizer": None if h_opt is None else h_opt.state_dict(),
            "batches": batches.state(), "rng": torch.get_rng_state(),
            "history": history.as_dict(),
        }, path)

    stopped = False
    carried: float | None = None  # the loss whose gradients are in .grad (after an L-BFGS step)
    bar = tqdm(total=iterations, initial=start, disable=not progress, desc=f"fit ({method})")
    restore_threads = limit_threads(threads)
    try:
        for it in range(start, iterations):
            t0 = time.perf_counter()
            idx = batches.next()
            Xb, yb = (X, y) if idx is None else (X[idx], y[idx])
            num_data = None if idx is None else N
            if carried is None:
                loss = evaluate(strategy, model, Xb, yb, num_data, grad_params)
            else:
                loss, carried = torch.tensor(carried, dtype=X.dtype, device=X.device), None
            loss_value = float(loss)
            if not math.isfinite(loss_value):
                raise ValueError(
                    f"the ELBO is {-loss_value} at iteration {it}: q is valid, so the "
                    "hyperparameters or the data are to blame; lower hyper_lr, check X and y, "
                    "or fix the diverging hyperparameters (requires_grad=False)."
                )
            if line_search and it >= hyper_warmup:  # (line_search: h_opt is the L-BFGS)
                # One L-BFGS step on θ; each trial point first gets a natural step on q.
                h_opt.step(profiling_closure(strategy, model, Xb, yb, num_data, grad_params,
                                              q_opt, loss_check), loss=loss)
                records, step_lr, carried = q_opt.last_records, None, h_opt.last_loss
            else:
                if method == "natgrad":
                    q_opt.step(checking_closure(strategy, model, Xb, yb, num_data, loss)
                               if loss_check else None)
                    records, step_lr = q_opt.last_records, None
                    if recompute_grad and h_opt is not None and not line_search:
                        evaluate(strategy, model, Xb, yb, num_data, grad_params)
                else:
                    q_opt.step()
                    records, step_lr = (), float(q_opt.param_groups[0]["lr"])
                if h_opt is not None and not line_search:
                    h_opt.step()
            elapsed += time.perf_counter() - t0

            history.append_step(
                iteration=it, elbo=-loss_value, time=elapsed, records=records, lr=step_lr
            )
            if callback is not None:
                with torch.no_grad():
                    value = callback(model, history)
                history.metric[-1] = None if value is None else float(value)
            bar.update(1)
            if progress and it % 10 == 0:
                bar.set_postfix(history.postfix())
            if path is not None and ((it + 1) % checkpoint_every == 0 or it + 1 == iterations):
                save(it + 1)
            if stop_when is not None and strategy.agree(stop_when(history)):
                stopped = it + 1 < iterations
                if path is not None:
                    save(it + 1)
                break
    finally:
        bar.close()
        restore_threads()
    strategy.finish(model)
    return FitResult(model, history, q_opt, h_opt, stopped_early=stopped)
