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
checked, not assumed: at the start (a model that differs across ranks is an error) and at the
end of training every parameter's bits are compared with rank 0's; divergence raises
:class:`ValueError` on every rank.

:func:`natvi.fit` itself knows nothing of this module: it is handed the strategy
:class:`DataParallel` (``natvi.fit(..., strategy=DataParallel())``), which shards the data,
counts the KL term once, all-reduces the ELBO and the gradients in one buffer, and agrees on
stopping.

Backends: gloo for CPU tensors, NCCL for CUDA tensors (the collectives run on the model's
device). Launch with ``torchrun``; see ``docs/distributed.md``.

Example (``torchrun --nproc-per-node 2 train.py``)::

    natvi.distributed.init_from_env()                 # reads RANK, WORLD_SIZE, MASTER_ADDR, ...
    rank, world = natvi.distributed.rank(), natvi.distributed.world_size()
    X_r, y_r = X[rank::world], y[rank::world]         # this rank's shard
    result = natvi.fit(model, X_r, y_r, strategy=natvi.distributed.DataParallel(),
                       batch_size=256)                # 256 per rank
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from natvi.model import needs_full_batch
from natvi.strategy import Strategy, current, use

__all__ = [
    "DataParallel",
    "fit",
    "data_parallel",
    "launched_by_torchrun",
    "init_from_env",
    "backend_for",
    "rank",
    "world_size",
    "is_main_process",
    "broadcast_parameters",
    "ambient",
    "parameter_checksum",
]

_INT_OF_SIZE = {8: torch.int64, 4: torch.int32, 2: torch.int16}


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
def _bits(module: nn.Module) -> Tensor:
    """The raw bits of every floating parameter and buffer, as one int64 vector."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    return torch.cat([
        t.detach().contiguous().reshape(-1).view(_INT_OF_SIZE[t.element_size()]).to(torch.int64)
        for t in tensors
    ])


def _in_sync(module: nn.Module) -> bool:
    """Whether every rank's parameters are bit-identical to rank 0's (the same answer on every
    rank: the mismatch flag is all-reduced, so all ranks raise together or none does)."""
    mine = _bits(module)
    reference = mine.clone()
    dist.broadcast(reference, src=0)
    mismatch = torch.tensor([int(not torch.equal(mine, reference))], device=mine.device)
    dist.all_reduce(mismatch, op=dist.ReduceOp.MAX)
    return not bool(mismatch.item())


def broadcast_parameters(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (e.g. after a nondeterministic
    initialisation such as k-means inducing points computed on each rank)."""
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


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


# ---------------------------------------------------------------- the strategy
class DataParallel(Strategy):
    """Data-parallel :func:`natvi.fit` over the initialised ``torch.distributed`` process group.

    Every rank calls ``natvi.fit(model, X, y, strategy=DataParallel(), ...)`` with the same
    model and arguments; ``batch_size`` is **per rank**. Per iteration rank ``r`` evaluates
    ``ℓ_r`` (its shard's scaled data term; the KL on rank 0 only), backpropagates, and one
    ``all_reduce`` of ``[ℓ_r, ∇ℓ_r]`` gives every rank the total ELBO and its gradient, so every
    optimiser sees the global problem. The history holds the global ELBO; only rank 0 shows a
    progress bar; ``stop_when`` is agreed (any rank's stop stops all). Checkpoints are refused.

    Args:
        shard_data: ``X, y`` are the full data, present on every rank; rank ``r`` of ``W`` takes
            rows ``r, r + W, r + 2W, ...``. Default: ``X, y`` already are this rank's shard.
        broadcast: first copy rank 0's parameters to every rank (for models built on each rank
            by code with possibly rank-dependent round-off, e.g. k-means inducing points). By
            default a model that differs across ranks is an error.
        check_every: deprecated and ignored (the replicas are compared bit by bit at the start
            and at the end of training).
    """

    def __init__(self, shard_data: bool = False, broadcast: bool = False,
                 check_every: int | None = None) -> None:
        if check_every is not None:
            warnings.warn(
                "check_every is deprecated and ignored: the replicas are compared at the start "
                "and at the end of training; it will be removed in the next release.",
                DeprecationWarning, stacklevel=2,
            )
        self.shard_data, self.broadcast = bool(shard_data), bool(broadcast)

    @property
    def is_main(self) -> bool:  # type: ignore[override]
        return rank() == 0

    def describe(self) -> dict:
        return {"shard_data": self.shard_data, "broadcast": self.broadcast, "check_every": 10}

    def prepare(
        self, model: nn.Module, X: Tensor, y: Tensor, *, batch_size: int | None = None,
        checkpoint: Any = None,
    ) -> tuple[Tensor, Tensor]:
        _require_group(next(iter(model.parameters())).device)
        if checkpoint is not None:
            raise ValueError(
                "checkpoint= is not supported in data-parallel training yet (each rank would "
                "write and resume on its own); checkpoint a single-process run, or save "
                "result.model.state_dict() on rank 0 after training."
            )
        if not callable(getattr(model, "prior_kl", None)):
            raise ValueError(
                "data-parallel training needs a model with prior_kl() (the KL term is counted "
                f"once, on rank 0); {type(model).__name__} has none."
            )
        if needs_full_batch(model):
            raise ValueError(
                f"{type(model).__name__} holds its training inputs (one variable per datum), "
                "so its q cannot be shared across data shards; use natvi.gp.SVGP."
            )
        if self.shard_data:
            r, w = dist.get_rank(), dist.get_world_size()
            X, y = X[r::w], y[r::w]
        _check_shards(X, y, batch_size)
        if self.broadcast:
            broadcast_parameters(model)
        if not _in_sync(model):
            raise ValueError(
                "the model differs across ranks at the start of data-parallel training; build it "
                "identically on every rank (same seed, same inducing points) or call "
                "natvi.distributed.broadcast_parameters(model) first."
            )
        return X, y

    def objective(self, model: Any, X: Tensor, y: Tensor, num_data: int | None) -> Tensor:
        """``ℓ_r``: this shard's scaled data term, minus the KL on rank 0 only."""
        value = model.elbo(X, y, num_data=num_data)
        return value if dist.get_rank() == 0 else value + model.prior_kl()

    def reduce(self, value: Tensor, params: Sequence[Tensor] = ()) -> Tensor:
        """One ``all_reduce(SUM)`` of ``[value, used flags, gradients]``; a parameter without a
        gradient on every rank keeps ``.grad = None`` (as in one process)."""
        grads = [p.grad for p in params]
        used = [g is not None for g in grads]
        flat = torch.cat(
            [value.detach().reshape(1), torch.tensor(used, dtype=value.dtype, device=value.device)]
            + [(torch.zeros_like(p) if g is None else g).reshape(-1).to(value.dtype)
               for p, g in zip(params, grads)]
        )
        dist.all_reduce(flat)
        n = len(params)
        chunks = torch.split(flat[1 + n:], [p.numel() for p in params])
        for p, was_used, g in zip(params, flat[1:1 + n].tolist(), chunks):
            p.grad = g.view_as(p).to(p.dtype).clone() if was_used > 0 else None
        return flat[0]

    def agree(self, stop: bool) -> bool:
        device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
        flag = torch.tensor([int(bool(stop))], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def finish(self, model: nn.Module) -> None:
        if not _in_sync(model):
            raise ValueError(
                "data-parallel replicas diverged: the parameters are no longer bit-identical to "
                "rank 0's. Something outside natvi.fit changed the model on one rank, or the "
                "ranks run nondeterministic kernels; make the model updates identical on every "
                "rank (or broadcast_parameters and restart)."
            )


# ---------------------------------------------------------------- entry points
def fit(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    shard_data: bool = False,
    broadcast: bool = False,
    check_every: int | None = None,
    **fit_kwargs: Any,
) -> Any:
    """``natvi.fit(model, X, y, strategy=DataParallel(shard_data, broadcast), **fit_kwargs)``;
    a collective over all ranks (see :class:`DataParallel`)."""
    from natvi.fit import fit as natvi_fit

    dp = DataParallel(shard_data, broadcast, check_every)
    return natvi_fit(model, X, y, strategy=dp, **fit_kwargs)


@contextlib.contextmanager
def data_parallel(
    shard_data: bool = True, broadcast: bool = True, check_every: int | None = None
) -> Iterator[DataParallel]:
    """Within this block, :func:`natvi.fit` calls given no strategy (e.g. from the estimators
    and the CLI) run data-parallel: ``natvi.strategy.use(DataParallel(...))``.

    Args:
        shard_data: the calls pass the full data, present on every rank; rank ``r`` trains on
            rows ``r::W`` (what ``natvi fit`` under torchrun does).
        broadcast: start from rank 0's parameters (the models are built inside library code
            on each rank).
        check_every: deprecated and ignored.
    """
    with use(DataParallel(shard_data, broadcast, check_every)) as dp:
        yield dp


# ---------------------------------------------------------------- deprecated
def ambient() -> dict | None:
    """Deprecated: the settings of the data-parallel strategy in force, or None."""
    warnings.warn(
        "natvi.distributed.ambient() is deprecated; use natvi.strategy.current() (a Strategy).",
        DeprecationWarning, stacklevel=2,
    )
    return current().describe()


def parameter_checksum(module: nn.Module) -> Tensor:
    """Deprecated: an exact fingerprint ``int64 [2]`` of every parameter's and buffer's bits
    (two sums of 16-bit chunks, one position-weighted)."""
    warnings.warn(
        "natvi.distributed.parameter_checksum is deprecated (the replicas are compared bit by "
        "bit); it will be removed in the next release.", DeprecationWarning, stacklevel=2,
    )
    parts = []
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            ints = t.detach().contiguous().reshape(-1).view(_INT_OF_SIZE[t.element_size()])
            shifts = torch.arange(0, 8 * t.element_size(), 16, device=t.device)
            parts.append(((ints.to(torch.int64).unsqueeze(-1) >> shifts) & 0xFFFF).reshape(-1))
    chunks = torch.cat(parts)
    pos = torch.arange(chunks.numel(), device=chunks.device)
    return torch.stack([chunks.sum(), (chunks * (pos % 65521 + 1)).sum()])
