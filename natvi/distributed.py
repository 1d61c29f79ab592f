"""Data-parallel training on ``torch.distributed``: one shard of the data per process.

The ELBO of a sparse GP is a sum over data plus one KL term,

    ELBO = Σ_r (N_r / B_r) Σ_{n ∈ batch_r} E_q[log p(y_n | f_n)]  −  KL(q ‖ p),

where rank ``r`` of ``W`` holds ``N_r`` of the ``N = Σ_r N_r`` data and draws ``B_r`` of them per
iteration (full batch: ``B_r = N_r``). Each rank evaluates its *local objective*

    ℓ_r = (N_r / B_r) Σ_{n ∈ batch_r} E_q[log p(y_n | f_n)]  −  [r = 0] · KL(q ‖ p),

so ``Σ_r ℓ_r`` is the total ELBO estimate and ``Σ_r ∇ℓ_r`` its gradient, with the
(rank-replicated) KL gradient counted exactly once. When every rank draws the same fraction of
its shard (``B_r / N_r = B / N``, e.g. equal shards and equal per-rank batches) the factor
``N_r / B_r`` *is* ``N / B`` with the global ``N`` and the global batch ``B = Σ_r B_r``, and the
estimate equals the single-process one on the union of the per-rank batches. When the fractions
differ, ``N_r / B_r`` keeps the estimate unbiased (a stratified sample), which a single global
``N / B`` would not.

What is reduced, and why it is enough: one ``all_reduce(SUM)`` per iteration of one flat
buffer holding ``ℓ_r`` and the *ordinary* gradients ``∇_ξ ℓ_r`` of q's coordinates ξ and of the
hyperparameters. The natural gradient ``(∂ξ/∂θ) (∂ξ/∂η)ᵀ ∇_ξ L`` is linear in ``∇_ξ L``, so
reducing ``∇_ξ`` and then taking the natural step is identical to reducing the natural
gradients (or ``∇_η L``) — and costs the same bytes. Every rank then holds the same reduced
gradient and the same ELBO value, and applies the same (deterministic) natural step, safeguard
decisions and Adam step, so q and the hyperparameters stay bit-identical across ranks. That is
checked, not assumed: at the start (a model that differs across ranks is an error) and every
``check_every`` iterations, a checksum of every parameter's bits is compared with rank 0's;
divergence raises :class:`ValueError` on every rank.

Backends: gloo for CPU tensors, NCCL for CUDA tensors (the collectives run on the model's
device). Launch with ``torchrun``; see ``docs/distributed.md``.

Example (``torchrun --nproc-per-node 2 train.py``)::

    natvi.distributed.init_from_env()                 # reads RANK, WORLD_SIZE, MASTER_ADDR, ...
    rank, world = natvi.distributed.rank(), natvi.distributed.world_size()
    X_r, y_r = X[rank::world], y[rank::world]         # this rank's shard
    result = natvi.fit(model, X_r, y_r, distributed=True, batch_size=256)  # 256 per rank
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from natvi.gp.vgp import VGP

__all__ = [
    "DataParallelELBO",
    "fit",
    "data_parallel",
    "ambient",
    "launched_by_torchrun",
    "init_from_env",
    "backend_for",
    "rank",
    "world_size",
    "is_main_process",
    "broadcast_parameters",
    "parameter_checksum",
]

_AMBIENT: list[dict | None] = []


# ---------------------------------------------------------------- process group
def launched_by_torchrun() -> bool:
    """True when the environment of ``torchrun`` (``RANK``, ``WORLD_SIZE``) is present."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def backend_for(device: torch.device | str) -> str:
    """``"nccl"`` for CUDA devices, ``"gloo"`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(backend: str | None = None, timeout: float = 1800.0) -> bool:
    """Initialise the default process group from ``torchrun``'s environment variables.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default NCCL when CUDA is available (each process
            then uses ``cuda:LOCAL_RANK``), else gloo.
        timeout: seconds a collective may wait for the other ranks before failing.

    Returns:
        True if a process group is (now) initialised, False when not launched by torchrun.
    """
    if dist.is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return True


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 (or no process group): the process that prints and writes files."""
    return rank() == 0


def _require_group(device: torch.device) -> None:
    if not dist.is_initialized():
        raise ValueError(
            "distributed training needs an initialised torch.distributed process group; launch "
            "with torchrun and call natvi.distributed.init_from_env() (or "
            "torch.distributed.init_process_group) first."
        )
    backend = dist.get_backend()
    if device.type == "cuda" and backend != "nccl" or device.type == "cpu" and backend == "nccl":
        raise ValueError(
            f"the model is on {device} but the process group uses the {backend} backend; use "
            f"{backend_for(device)!r} for {device.type} tensors (init_from_env(backend=...))."
        )


# ---------------------------------------------------------------- consistency
def _bit_chunks(t: Tensor) -> Tensor:
    """The raw bits of a floating tensor as 16-bit chunks in int64 ``[n, k]``."""
    t = t.detach().reshape(-1)
    bits = {8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()]
    ints = t.contiguous().view(bits).to(torch.int64)
    shifts = torch.arange(0, 8 * t.element_size(), 16, device=t.device)
    return (ints.unsqueeze(-1) >> shifts) & 0xFFFF


def parameter_checksum(module: nn.Module) -> Tensor:
    """An exact fingerprint of every parameter's and buffer's bits, ``int64 [2]``.

    Two sums of 16-bit chunks of the bit patterns, one of them position-weighted (weights in
    ``[1, 65521]``); exact integer arithmetic, so any single flipped bit changes it and there is
    no round-off to confuse with divergence.
    """
    device = next(iter(module.parameters()), torch.zeros(())).device
    plain = torch.zeros((), dtype=torch.int64, device=device)
    weighted = torch.zeros((), dtype=torch.int64, device=device)
    offset = 0
    tensors = list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]
    for t in tensors:
        chunks = _bit_chunks(t)
        pos = torch.arange(offset, offset + chunks.numel(), device=device).reshape(chunks.shape)
        plain += chunks.sum()
        weighted += (chunks * (pos % 65521 + 1)).sum()
        offset += chunks.numel()
    return torch.stack([plain, weighted])


def _in_sync(module: nn.Module) -> bool:
    """Whether every rank's parameters are bit-identical to rank 0's (the same answer on every
    rank: the mismatch flag is all-reduced, so all ranks raise together or none does)."""
    mine = parameter_checksum(module)
    reference = mine.clone()
    dist.broadcast(reference, src=0)
    mismatch = (mine != reference).any().to(torch.int64).reshape(1)
    dist.all_reduce(mismatch, op=dist.ReduceOp.MAX)
    return not bool(mismatch.item())


def broadcast_parameters(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (e.g. after a nondeterministic
    initialisation such as k-means inducing points computed on each rank)."""
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


# ---------------------------------------------------------------- the wrapped model
class DataParallelELBO(nn.Module):
    """A natvi model whose ``elbo`` is the all-reduced total over every rank's shard.

    It fulfils the model contract of :func:`natvi.fit` (``elbo``, ``hyperparameters``,
    ``variational_parameters``) around ``module`` (an :class:`natvi.gp.SVGP` or any model with
    ``elbo(X, y, num_data)`` and ``prior_kl()``). ``elbo(X_r, y_r, num_data)`` returns a scalar
    whose *value* is ``Σ_r ℓ_r`` (see the module docstring) and whose *gradient* with respect to
    every parameter is ``Σ_r ∇ℓ_r``: the local gradients are computed inside the call,
    all-reduced in one flat buffer with the value, and attached to a surrogate
    ``Σ_r ℓ_r + (s − stop_grad(s))`` with ``s = Σ_p ⟨p, G_p⟩`` (one dot product); the bracket
    is exactly zero and its gradient is exactly ``G_p``, so ``loss.backward()`` leaves the reduced gradient in
    ``.grad`` and any optimiser (NaturalGradient, Adam) sees the global problem. Without grad
    mode (the safeguard's loss re-evaluations) only the value is reduced.

    Constructing it is a collective: every rank must construct it, and it raises
    :class:`ValueError` on every rank if the parameters differ across ranks.

    Args:
        module: the model, identical on every rank.
        check_every: compare parameter checksums with rank 0 every this many gradient
            evaluations (0: only at construction and on :meth:`check_in_sync`).
    """

    def __init__(self, module: nn.Module, check_every: int = 10) -> None:
        super().__init__()
        for name in ("elbo", "prior_kl", "hyperparameters", "variational_parameters"):
            if not callable(getattr(module, name, None)):
                raise ValueError(
                    f"data-parallel training needs a model with {name}() (the KL term is counted "
                    f"once, on rank 0); {type(module).__name__} has none."
                )
        if isinstance(module, VGP):
            raise ValueError(
                f"{type(module).__name__} holds its training inputs (one variable per datum), "
                "so its q cannot be shared across data shards; use natvi.gp.SVGP."
            )
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 0:
            raise ValueError(f"check_every must be an integer >= 0, got {check_every!r}.")
        self.module = module
        self.check_every = check_every
        self._calls = 0
        self.device = next(iter(module.parameters())).device
        _require_group(self.device)
        if not _in_sync(module):
            raise ValueError(
                "the model differs across ranks at the start of data-parallel training; build it "
                "identically on every rank (same seed, same inducing points) or call "
                "natvi.distributed.broadcast_parameters(model) first."
            )

    def hyperparameters(self) -> Iterator[nn.Parameter]:
        return self.module.hyperparameters()

    def variational_parameters(self) -> Iterator[nn.Parameter]:
        return self.module.variational_parameters()

    def prior_kl(self) -> Tensor:
        return self.module.prior_kl()

    def check_in_sync(self) -> None:
        """Raise :class:`ValueError` on every rank unless all ranks hold rank 0's parameters."""
        if not _in_sync(self.module):
            raise ValueError(
                "data-parallel replicas diverged: the parameters are no longer bit-identical to "
                "rank 0's. Something outside natvi.fit changed the model on one rank, or the "
                "ranks run nondeterministic kernels; make the model updates identical on every "
                "rank (or broadcast_parameters and restart)."
            )

    def local_objective(self, X: Tensor, y: Tensor, num_data: int | None = None) -> Tensor:
        """``ℓ_r``: this shard's scaled data term, minus the KL on rank 0 only."""
        value = self.module.elbo(X, y, num_data=num_data)
        if dist.get_rank() != 0:
            value = value + self.module.prior_kl()
        return value

    def elbo(self, X: Tensor, y: Tensor, num_data: int | None = None) -> Tensor:
        """The total ELBO ``Σ_r ℓ_r`` (scalar) carrying the reduced gradient; a collective.

        Args:
            X: this rank's inputs ``[B_r, D]``; y: its targets ``[B_r, ...]``.
            num_data: this rank's shard size ``N_r`` when ``X`` is a minibatch of it.
        """
        grad_mode = torch.is_grad_enabled()
        if grad_mode:
            self._calls += 1
            if self.check_every and self._calls % self.check_every == 0:
                self.check_in_sync()
        local = self.local_objective(X, y, num_data)
        if not grad_mode or not local.requires_grad:
            total = local.detach().clone()
            dist.all_reduce(total)
            return total
        params = [p for p in self.module.parameters() if p.requires_grad]
        grads = torch.autograd.grad(local, params, allow_unused=True)
        dtype, n = local.dtype, len(params)
        used = torch.tensor([g is not None for g in grads], dtype=dtype, device=self.device)
        flat = torch.cat(
            [local.detach().reshape(1), used]
            + [
                (torch.zeros_like(p) if g is None else g).reshape(-1).to(dtype)
                for p, g in zip(params, grads)
            ]
        )
        dist.all_reduce(flat)
        total = flat[0]
        keep = [i for i, u in enumerate(flat[1 : 1 + n].tolist()) if u > 0]  # used on a rank
        if not keep:
            return total
        reduced = torch.split(flat[1 + n :], [p.numel() for p in params])
        theta = torch.cat([params[i].reshape(-1).to(dtype) for i in keep])
        s = theta @ torch.cat([reduced[i] for i in keep])
        return total + (s - s.detach())

    def forward(self, X: Tensor, y: Tensor, num_data: int | None = None) -> Tensor:
        return self.elbo(X, y, num_data)


# ---------------------------------------------------------------- training
def _shard_info(X: Tensor, y: Tensor) -> dict[str, Any]:
    return {
        "N": int(X.shape[0]),
        "X": (X.dim(), tuple(X.shape[1:]), str(X.dtype)),
        "y": (y.dim(), tuple(y.shape[1:]), str(y.dtype)),
    }


def _check_shards(X: Tensor, y: Tensor, batch_size: int | None) -> list[int]:
    """Gather every rank's shard description; raise the same ValueError on every rank."""
    infos: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(infos, _shard_info(X, y))
    for what in ("X", "y"):
        kinds = {info[what] for info in infos}
        if len(kinds) > 1:
            detail = "; ".join(f"rank {r}: {info[what]}" for r, info in enumerate(infos))
            raise ValueError(
                f"data shards of inconsistent shape across ranks ({what}: dim, trailing shape, "
                f"dtype) — {detail}. Every rank must hold rows of the same table."
            )
    sizes = [info["N"] for info in infos]
    if min(sizes) < 1:
        raise ValueError(f"every rank needs at least one datum; shard sizes are {sizes}.")
    if batch_size is not None and batch_size > min(sizes):
        raise ValueError(
            f"batch_size {batch_size} (per rank) exceeds the smallest shard ({min(sizes)} rows; "
            f"shard sizes {sizes}); lower batch_size or rebalance the shards."
        )
    return sizes


def _agreed(stop_when: Callable[[Any], bool], device: torch.device) -> Callable[[Any], bool]:
    """``stop_when`` decided together: stop when any rank's rule says stop (an all-reduce of
    the decision), so no rank is left waiting in a collective."""

    def decide(history: Any) -> bool:
        flag = torch.tensor([int(bool(stop_when(history)))], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    return decide


def fit(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    shard_data: bool = False,
    broadcast: bool = False,
    check_every: int = 10,
    **fit_kwargs: Any,
) -> Any:
    """:func:`natvi.fit` on this rank's shard of the data; a collective over all ranks.

    ``natvi.fit(model, X, y, distributed=True, ...)`` calls this. Every rank calls it with the
    same model and the same keyword arguments; ``batch_size`` is **per rank** (global batch
    ``B = Σ_r B_r``). The history holds the global (all-reduced) ELBO, identical on every rank;
    only rank 0 shows a progress bar. ``stop_when`` is agreed across ranks; ``callback`` runs on
    every rank. Checkpointing is not supported across ranks (a ValueError).

    Args:
        model: the model (identical on every rank; checked).
        X, y: this rank's shard, or — with ``shard_data=True`` — the full data, present on every
            rank, of which rank ``r`` takes rows ``r, r + W, r + 2W, ...``.
        shard_data: take the strided shard of ``X, y`` here.
        broadcast: first copy rank 0's parameters to every rank (for models built on each
            rank by code with possibly rank-dependent round-off, e.g. k-means inducing points
            in the estimators); by default a model that differs across ranks is an error.
        check_every: replica-consistency check period (iterations).
        **fit_kwargs: the arguments of :func:`natvi.fit`.

    Returns:
        :class:`natvi.fit.FitResult`; ``.model`` is ``model``.
    """
    from natvi.fit import fit as single_fit

    device = next(iter(model.parameters())).device
    _require_group(device)
    if fit_kwargs.get("checkpoint") is not None:
        raise ValueError(
            "checkpoint= is not supported in data-parallel training yet (each rank would write "
            "and resume on its own); checkpoint a single-process run, or save "
            "result.model.state_dict() on rank 0 after training."
        )
    if shard_data:
        r, w = dist.get_rank(), dist.get_world_size()
        X, y = X[r::w], y[r::w]
    _check_shards(X, y, fit_kwargs.get("batch_size"))
    if broadcast:
        broadcast_parameters(model)
    wrapped = DataParallelELBO(model, check_every=check_every)
    if fit_kwargs.get("stop_when") is not None:
        fit_kwargs["stop_when"] = _agreed(fit_kwargs["stop_when"], device)
    fit_kwargs["progress"] = bool(fit_kwargs.get("progress", True)) and dist.get_rank() == 0
    _AMBIENT.append(None)  # the inner call is this rank's own loop, not data-parallel again
    try:
        result = single_fit(wrapped, X, y, **fit_kwargs)
    finally:
        _AMBIENT.pop()
    wrapped.check_in_sync()
    result.model = model
    return result


@contextlib.contextmanager
def data_parallel(
    shard_data: bool = True, broadcast: bool = True, check_every: int = 10
) -> Iterator[None]:
    """Within this block, :func:`natvi.fit` calls (e.g. from the estimators and the CLI) run
    data-parallel over the initialised process group.

    Args:
        shard_data: the calls pass the full data, present on every rank; rank ``r`` trains on
            rows ``r::W`` (what ``natvi fit`` under torchrun does).
        broadcast: start from rank 0's parameters (the models are built inside library code
            on each rank).
        check_every: replica-consistency check period.
    """
    _AMBIENT.append(
        {"shard_data": bool(shard_data), "broadcast": bool(broadcast), "check_every": check_every}
    )
    try:
        yield
    finally:
        _AMBIENT.pop()


def ambient() -> dict | None:
    """The innermost :func:`data_parallel` setting, or None (single-process :func:`natvi.fit`,
    also inside :func:`fit`'s own per-rank loop)."""
    return _AMBIENT[-1] if _AMBIENT else None
