"""natvi._linalg's helpers against torch's general routines."""

from __future__ import annotations

import pytest
import torch

from natvi._linalg import batch_shape, cho_solve_vec, cholesky_inverse


def _spd(*batch, M=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(*batch, M, M, generator=g, dtype=torch.float64)
    return (B @ B.mT + M * torch.eye(M, dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cholesky_inverse_is_the_symmetric_inverse(batch, dtype):
    # natvi relies on it: the CPU result is symmetric bit for bit (not symmetrised again)
    P = _spd(*batch, M=60, dtype=dtype)
    S = cholesky_inverse(torch.linalg.cholesky(P))
    assert torch.equal(S, S.mT)
    tol = 1e-10 if dtype == torch.float64 else 1e-3
    torch.testing.assert_close(S, torch.linalg.inv(P), rtol=tol, atol=tol)


def test_cho_solve_vec_broadcasts_like_cholesky_solve():
    L = torch.linalg.cholesky(_spd(3))
    for b_shape in [(7,), (3, 7), (2, 3, 7)]:
        b = torch.randn(*b_shape, dtype=torch.float64)
        want = torch.cholesky_solve(b.unsqueeze(-1), L.expand(*b_shape[:-1] or (3,), 7, 7)
                                    if len(b_shape) > 1 else L).squeeze(-1)
        torch.testing.assert_close(cho_solve_vec(b, L), want, rtol=1e-12, atol=1e-12)


def test_batch_shape_agrees_with_torch():
    for shapes in [((), ()), ((3,), (3,)), ((3,), ()), ((1, 4), (2, 1))]:
        assert batch_shape(*shapes) == torch.broadcast_shapes(*shapes)
    with pytest.raises(RuntimeError):
        batch_shape((2,), (3,))


def test_identity_is_the_identity_and_shared_per_size_dtype_and_device():
    from natvi._linalg import identity

    eye = identity(4, torch.float32, torch.device("cpu"))
    assert torch.equal(eye, torch.eye(4)) and eye.dtype == torch.float32
    assert identity(4, torch.float32, torch.device("cpu")) is eye
    assert identity(4, torch.float64, torch.device("cpu")) is not eye
