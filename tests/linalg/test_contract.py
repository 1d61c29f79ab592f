"""One contract, every solver: same protocol, dense and operator inputs, batched right-hand
sides, dtype/device following the inputs, and the same errors for bad input."""

from __future__ import annotations

import pytest
import torch

from natvi.linalg import (
    CG,
    OU,
    Cholesky,
    LowRankPlusDiag,
    Operator,
    SolveResult,
    Woodbury,
)
from tests.linalg.problems import low_rank_plus_diag, rhs, spd

# name -> (factory, accepts dense/matrix-free A, float64 tolerance on x)
SOLVERS = {
    "cholesky": (Cholesky, True, 1e-10),
    "cg": (lambda: CG(tol=1e-13), True, 1e-10),
    "cg_jacobi": (lambda: CG(tol=1e-13, preconditioner="jacobi"), True, 1e-10),
    "woodbury": (Woodbury, False, 1e-10),
    # noise-free OU: the exact average's bias is O(1/N) at no cost in N; Euler's last state
    # (num_samples=1 after a long burn-in) converges geometrically
    "ou_exact": (lambda: OU(dt=1.0, num_samples=10**14, noise=0.0, method="exact"), True, 1e-9),
    "ou_euler": (lambda: OU(dt=0.015, burnin=4000, num_samples=1, noise=0.0), True, 1e-9),
}


@pytest.fixture(params=sorted(SOLVERS))
def solver_case(request):
    return SOLVERS[request.param]


def _as_matrix_free(A):
    return Operator(lambda v: A @ v, A.shape[-1], dtype=A.dtype)


def _check(res, A_dense, b, tol):
    assert isinstance(res, SolveResult)
    ref = torch.linalg.solve(A_dense, b.unsqueeze(-1) if b.dim() == A_dense.dim() - 1 else b)
    ref = ref.squeeze(-1) if b.dim() == A_dense.dim() - 1 else ref
    assert res.x.shape == b.shape and res.x.dtype == b.dtype and res.x.device == b.device
    torch.testing.assert_close(res.x, ref, atol=tol, rtol=0)
    assert res.digital_seconds >= 0 and isinstance(res.iterations, int)


@pytest.mark.parametrize("b_shape", [(20,), (20, 3)])
def test_low_rank_plus_diag_operator_solved_like_torch(solver_case, b_shape):
    factory, _, tol = solver_case
    A = low_rank_plus_diag(20, 4)
    b = rhs(b_shape)
    res = factory().solve(A, b)
    _check(res, A.to_dense(), b, tol)
    expected_residual_shape = b_shape[1:] if len(b_shape) == 2 else ()
    assert res.residual.shape == expected_residual_shape
    assert float(res.residual.max()) < 1e-9


@pytest.mark.parametrize("b_shape", [(15,), (15, 4)])
def test_dense_and_matrix_free_agree_with_torch_solve(solver_case, b_shape):
    factory, general, tol = solver_case
    if not general:
        pytest.skip("structured solver")
    A = spd(15, cond=100.0)
    b = rhs(b_shape)
    _check(factory().solve(A, b), A, b, tol)
    _check(factory().solve(_as_matrix_free(A), b), A, b, tol)


def test_batched_dense_systems(solver_case):
    factory, general, tol = solver_case
    if general:
        A = spd(10, cond=50.0, batch=(3,))
    else:
        A = low_rank_plus_diag(10, 3, batch=(3,))
    Ad = A if torch.is_tensor(A) else A.to_dense()
    for b in (rhs((3, 10)), rhs((3, 10, 2))):
        res = factory().solve(A, b)
        _check(res, Ad, b, tol)


def test_float32_stays_float32(solver_case):
    factory, general, _ = solver_case
    A = spd(8, dtype=torch.float32) if general else low_rank_plus_diag(8, 2, dtype=torch.float32)
    b = rhs((8,), dtype=torch.float32)
    res = factory().solve(A, b)
    assert res.x.dtype == torch.float32
    Ad = A if torch.is_tensor(A) else A.to_dense()
    torch.testing.assert_close(res.x, torch.linalg.solve(Ad, b), atol=1e-4, rtol=1e-4)


def test_warm_start_at_solution_keeps_it(solver_case):
    factory, general, tol = solver_case
    A = spd(12, cond=30.0) if general else low_rank_plus_diag(12, 3)
    Ad = A if torch.is_tensor(A) else A.to_dense()
    b = rhs((12,))
    x_star = torch.linalg.solve(Ad, b)
    torch.testing.assert_close(factory().solve(A, b, x0=x_star).x, x_star, atol=tol, rtol=0)


F64 = torch.float64


def _structured(n=3, value=1.0):
    return LowRankPlusDiag(1.0, torch.full((n, 1), value, dtype=F64))


# (dense A or None, structured A, b, expected words); None: that input has no dense analogue
BAD_INPUTS = [
    (torch.ones(3, 4, dtype=F64), None, torch.ones(3, dtype=F64), "square"),
    (torch.eye(3, dtype=F64), _structured(), torch.ones(4, dtype=F64), "shape mismatch"),
    (torch.eye(3, dtype=F64), _structured(), torch.ones(2, 3, 1, dtype=F64), "shape"),
    (
        torch.eye(3, dtype=F64),
        _structured(),
        torch.tensor([1.0, float("nan"), 0.0], dtype=F64),
        "NaN",
    ),
    (torch.full((3, 3), float("nan"), dtype=F64), None, torch.ones(3, dtype=F64), "NaN"),
    (torch.eye(3, dtype=F64), _structured(), torch.ones(3, dtype=torch.float32), "dtype"),
    ("not a matrix", "not an operator", torch.ones(3, dtype=F64), "torch.Tensor"),
]


@pytest.mark.parametrize("case", range(len(BAD_INPUTS)))
def test_bad_input_raises_value_error_naming_the_problem(solver_case, case):
    factory, general, _ = solver_case
    dense, structured, b, match = BAD_INPUTS[case]
    A = dense if general else structured
    if A is None:
        pytest.skip("no structured analogue")
    with pytest.raises(ValueError, match=match):
        factory().solve(A, b)


def test_structured_operator_rejects_nan_factor():
    with pytest.raises(ValueError, match="NaN"):
        _structured(value=float("nan"))


def test_x0_of_wrong_shape_raises(solver_case):
    factory, general, _ = solver_case
    A = spd(5) if general else low_rank_plus_diag(5, 2)
    with pytest.raises(ValueError, match="x0"):
        factory().solve(A, rhs((5,)), x0=torch.zeros(4, dtype=torch.float64))


def test_cholesky_rejects_indefinite_matrix():
    A = torch.diag(torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="not positive definite"):
        Cholesky().solve(A, torch.ones(3, dtype=torch.float64))


def test_cg_rejects_negative_curvature():
    A = torch.diag(torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="positive definite"):
        CG().solve(A, torch.ones(3, dtype=torch.float64))


def test_woodbury_refuses_dense_matrix_and_suggests_cholesky():
    with pytest.raises(ValueError, match="Cholesky"):
        Woodbury().solve(spd(4), rhs((4,)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tol": 0.0}, "tol"),
        ({"max_iter": 0}, "max_iter"),
        ({"preconditioner": "ilu"}, "preconditioner"),
    ],
)
def test_cg_validates_its_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CG(**kwargs)


def test_low_rank_plus_diag_validates_and_matches_its_dense_form():
    U = rhs((6, 2))
    V = rhs((6, 2), seed=5)
    A = LowRankPlusDiag(torch.linspace(0.5, 1.0, 6, dtype=torch.float64), U, V)
    dense = torch.diag(torch.linspace(0.5, 1.0, 6, dtype=torch.float64)) + U @ V.mT
    torch.testing.assert_close(A.to_dense(), dense)
    torch.testing.assert_close(A.diagonal(), dense.diagonal())
    x = rhs((6,), seed=7)
    torch.testing.assert_close(A.matvec(x), dense @ x)
    torch.testing.assert_close(Woodbury().solve(A, x).x, torch.linalg.solve(dense, x))
    with pytest.raises(ValueError, match="damping"):
        LowRankPlusDiag(0.0, U)
    with pytest.raises(ValueError, match="V"):
        LowRankPlusDiag(1.0, U, rhs((5, 2)))


def test_cg_stops_at_max_iter_and_reports_not_converged():
    A = spd(30, cond=1e4)
    res = CG(tol=1e-14, max_iter=3).solve(A, rhs((30,)))
    assert res.iterations == 3 and res.converged is False
    res = CG(tol=1e-10).solve(A, rhs((30,)))
    assert res.converged is True and float(res.residual) <= 1e-10


def test_operator_requires_callable_and_size():
    with pytest.raises(ValueError, match="matvec"):
        Operator(3, 3)
    with pytest.raises(ValueError, match="size"):
        Operator(lambda v: v, 0)
