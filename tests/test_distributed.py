"""Data-parallel training (natvi.distributed) against single-process training.

One pair of gloo processes on loopback runs every distributed scenario (process start-up is the
expensive part); each rank saves what it saw, and the tests compare that with single-process
runs in this process: the same ELBO trajectory and final q to 1e-10 in float64 (full batch, and
minibatches whose union over ranks is the single-process batch), q and hyperparameters
bit-identical across ranks, and clear errors raised on *every* rank (no hang).
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import gpytorch
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import natvi
from natvi.cli import main as natvi_main
from natvi.distributed import DataParallel
from natvi.fit import _Batches
from natvi.gp import SVGP
from natvi.likelihoods import Bernoulli
from natvi.optim import NaturalGradient
from natvi.optim.schedules import LogLinearWarmup
from natvi.parameterizations import MeanCholesky, Natural

WORLD = 2
N, M, D = 48, 6, 2  # N divisible by WORLD
ITERS = 10
BATCH = 8  # per rank; global batch 16
TOL = 1e-10
TIMEOUT_S = 120


# ---------------------------------------------------------------- problem
def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = ((X[:, 0] * X[:, 1] + 0.3 * torch.randn(N, generator=g, dtype=torch.float64)) > 0)
    return X, y.to(torch.float64)


def _model(parameterization=None) -> SVGP:
    X, _ = _data()
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())
    return SVGP(kernel=kernel, likelihood=Bernoulli(), inducing_points=X[:M].clone(),
                parameterization=parameterization or Natural()).double()


def _fit_kwargs() -> dict:
    return dict(iterations=ITERS, lr=LogLinearWarmup(0.1, 1.0, K=3), hyper_lr=0.05,
                progress=False)


def _state(model: SVGP) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _shard(X: torch.Tensor, y: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = X.shape[0] // WORLD  # contiguous shards: rank r holds rows [r n, (r + 1) n)
    return X[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]


def _union_batches(seed: int) -> list[torch.Tensor]:
    """Row indices of the single-process batch at each iteration: the union over ranks of
    what natvi.fit draws per rank (the same seeded order on every rank's own shard)."""
    n = N // WORLD
    batches = _Batches(n, BATCH, seed, torch.device("cpu"))
    out = []
    for _ in range(ITERS):
        local = batches.next()
        out.append(torch.cat([r * n + local for r in range(WORLD)]))
    return out


def _reference_minibatch(seed: int) -> tuple[list[float], dict]:
    """Single process, the documented optimiser loop, global batch = union of rank batches."""
    X, y = _data()
    model = _model()
    kw = _fit_kwargs()
    q_opt = NaturalGradient.for_model(model, lr=kw["lr"], safeguard="backoff")
    h_opt = torch.optim.Adam([p for p in model.hyperparameters() if p.requires_grad],
                             lr=kw["hyper_lr"])
    elbos = []
    for idx in _union_batches(seed):
        model.zero_grad(set_to_none=True)
        loss = -model.elbo(X[idx], y[idx], num_data=N)
        elbos.append(-float(loss.detach()))
        loss.backward()
        q_opt.step()
        h_opt.step()
    return elbos, _state(model)


# ---------------------------------------------------------------- the two ranks
def _catch(fn) -> str:
    try:
        fn()
    except ValueError as err:
        return str(err)
    return "no error"


def _scenarios(rank: int) -> dict:
    X, y = _data()
    X_r, y_r = _shard(X, y, rank)
    out: dict = {}
    model = _model(Natural())  # through the public entry point
    res = natvi.fit(model, X_r, y_r, distributed=True, **_fit_kwargs())
    out["full_natural"] = {"elbo": res.history.elbo, "state": _state(model)}
    model = _model(MeanCholesky())  # back-off re-evaluates the (all-reduced) loss
    res = natvi.distributed.fit(model, X_r, y_r, **_fit_kwargs())
    out["full_meanchol"] = {"elbo": res.history.elbo, "state": _state(model)}

    model = _model()
    res = natvi.fit(model, X_r, y_r, strategy=DataParallel(), batch_size=BATCH, seed=7,
                    **_fit_kwargs())
    out["minibatch"] = {"elbo": res.history.elbo, "state": _state(model)}

    bad_X = torch.cat([X_r, X_r[:, :1]], dim=1) if rank == 1 else X_r
    out["err_shapes"] = _catch(lambda: natvi.distributed.fit(_model(), bad_X, y_r, iterations=1,
                                                             progress=False))
    out["err_batch"] = _catch(lambda: natvi.distributed.fit(
        _model(), X_r[: 5 if rank == 1 else 24], y_r[: 5 if rank == 1 else 24], batch_size=6,
        iterations=1, progress=False))

    def differing_model():
        model = _model()
        if rank == 1:
            with torch.no_grad():
                model.inducing_points[0, 0] += 1e-12
        natvi.distributed.fit(model, X_r, y_r, iterations=1, progress=False)

    out["err_start"] = _catch(differing_model)

    def diverging_replica():
        def drift(model, history):  # an update on one rank only: the replicas drift apart
            if rank == 1:
                model.q.xi()[0].add_(1e-9)

        natvi.fit(_model(), X_r, y_r, strategy=DataParallel(), iterations=3, progress=False,
                  callback=drift)

    out["err_diverge"] = _catch(diverging_replica)
    return out


def _worker(rank: int, port: int, outdir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        result = _scenarios(rank)
    except Exception:  # reported to the test, which fails with the traceback
        result = {"crash": traceback.format_exc()}
    torch.save(result, Path(outdir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    outdir = tmp_path_factory.mktemp("distributed")
    ctx = mp.spawn(_worker, args=(_free_port(), str(outdir)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"the {WORLD} gloo processes did not finish in {TIMEOUT_S} s")
    results = [torch.load(outdir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r, res in enumerate(results):
        assert "crash" not in res, f"rank {r} crashed:\n{res.get('crash')}"
    return results


# ---------------------------------------------------------------- tests
def _assert_close_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=TOL, atol=TOL, msg=k)


@pytest.mark.parametrize("case,param", [("full_natural", Natural), ("full_meanchol", MeanCholesky)])
def test_full_batch_matches_single_process(ranks, case, param):
    X, y = _data()
    model = _model(param())
    single = natvi.fit(model, X, y, **_fit_kwargs())
    for res in ranks:
        assert len(res[case]["elbo"]) == ITERS
        torch.testing.assert_close(torch.tensor(res[case]["elbo"]),
                                   torch.tensor(single.history.elbo), rtol=TOL, atol=TOL)
        _assert_close_states(res[case]["state"], _state(model))


def test_minibatch_matches_single_process_on_union_batch(ranks):
    elbos, state = _reference_minibatch(seed=7)
    for res in ranks:
        torch.testing.assert_close(torch.tensor(res["minibatch"]["elbo"]), torch.tensor(elbos),
                                   rtol=TOL, atol=TOL)
        _assert_close_states(res["minibatch"]["state"], state)
    # the estimate is a minibatch one: it differs from the full-batch ELBO trajectory
    full = torch.tensor(ranks[0]["full_natural"]["elbo"])
    assert (torch.tensor(elbos) - full).abs().max() > 1e-3


@pytest.mark.parametrize("case", ["full_natural", "full_meanchol", "minibatch"])
def test_replicas_stay_bit_identical(ranks, case):
    assert ranks[0][case]["elbo"] == ranks[1][case]["elbo"]
    for k, v in ranks[0][case]["state"].items():
        assert torch.equal(v, ranks[1][case]["state"][k]), k


@pytest.mark.parametrize("case,message", [
    ("err_shapes", "inconsistent shape across ranks"),
    ("err_batch", "exceeds the smallest shard"),
    ("err_start", "differs across ranks at the start"),
    ("err_diverge", "replicas diverged"),
])
def test_errors_are_raised_on_every_rank(ranks, case, message):
    for res in ranks:
        assert message in res[case]


def test_without_process_group_says_what_to_do():
    X, y = _data()
    with pytest.raises(ValueError, match="init_from_env"):
        natvi.distributed.fit(_model(), X, y, iterations=1, progress=False)


def test_cli_fit_under_torchrun_matches_single_process(tmp_path):
    """``torchrun --nproc-per-node 2 -m natvi fit``: one report, one file (rank 0), and the
    model a single-process ``natvi fit`` saves (full batch: the shards' union is all rows)."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    X, y = _data()
    lines = ["a,b,label"] + [f"{u!r},{v!r},{int(t)}" for (u, v), t in zip(X.tolist(), y.tolist())]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "dp").mkdir()
    common = ["data.csv", "--target", "label", "--max-iter", "6", "--inducing", "5",
              "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", str(WORLD), "-m", "natvi", "fit",
         *common, "--out", "dp/model.pt"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("model saved to") == 1, proc.stdout
    assert [p.name for p in (tmp_path / "dp").iterdir()] == ["model.pt"]
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert natvi_main(["fit", *common, "--out", "single.pt"]) == 0
    finally:
        os.chdir(cwd)
    dp = torch.load(tmp_path / "dp" / "model.pt", weights_only=True)
    single = torch.load(tmp_path / "single.pt", weights_only=True)
    assert dp["fitted"]["n_iter_"] == single["fitted"]["n_iter_"] == 6
    elbo_dp, elbo_single = dp["fitted"]["elbo_"], single["fitted"]["elbo_"]
    assert abs(elbo_dp - elbo_single) < TOL * abs(elbo_single)
    _assert_close_states(dp["state_dict"], single["state_dict"])


@pytest.mark.parametrize("command", ["fit", "compare"])
def test_cli_help_says_torchrun(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        natvi_main([command, "--help"])
    assert exit_.value.code == 0
    assert "can be launched by torchrun" in " ".join(capsys.readouterr().out.split())
