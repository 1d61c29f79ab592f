"""The OU solver refuses what it can tell is not positive definite and never returns the time
average of a diverging trajectory as an answer (issue 18 case 2)."""

from __future__ import annotations

import pytest
import torch

from natvi.linalg import CG, OU, Cholesky, LowRankPlusDiag, Operator
from tests.linalg.problems import spd

DT = torch.float64
INDEFINITE = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=DT)  # eigenvalues 3 and −1
B = torch.tensor([1.0, 0.0], dtype=DT)


def test_the_issue_example_is_refused_like_cholesky_refuses_it():
    with pytest.raises(ValueError, match="A is not positive definite") as ou_err:
        OU(dt=0.1, num_samples=50).solve(INDEFINITE, B)
    with pytest.raises(ValueError, match="A is not positive definite") as chol_err:
        Cholesky().solve(INDEFINITE, B)
    assert str(ou_err.value) == str(chol_err.value)
    for solver in (CG(), OU(method="exact")):
        with pytest.raises(ValueError, match="positive definite"):
            solver.solve(INDEFINITE, B)


def test_a_negative_definite_operator_is_refused_from_the_power_iteration():
    op = Operator(lambda v: -INDEFINITE @ v - 2.0 * v, 2, dtype=DT)  # eigenvalues −5, −1
    with pytest.raises(ValueError, match="largest eigenvalue is -5.* by power iteration"):
        OU(dt=0.1, num_samples=50, seed=0).solve(op, B)


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_a_matrix_free_indefinite_operator_whose_trajectory_diverges_is_an_error(noise):
    op = Operator(lambda v: INDEFINITE @ v, 2, dtype=DT)  # λ_max > 0: only the run can tell
    with pytest.raises(ValueError, match=r"the OU trajectory diverged: after 50 Euler steps "
                                         r"\(t = 5 τ\)") as err:
        OU(dt=0.1, num_samples=50, noise=noise, seed=0).solve(op, B)
    assert "not positive definite" in str(err.value)
    with pytest.raises(ValueError, match="diverged: after 64 Euler steps"):  # stops early
        OU(dt=0.1, num_samples=10_000, noise=noise, seed=0).solve(op, B)


def test_divergence_check_is_silent_on_positive_definite_problems():
    """Many seeded noisy runs, long and short, hard and easy, near the stability bound: the
    divergence bound is never reached, and the noise-free drift never grows."""
    for seed in range(20):
        A = spd(5, cond=100.0, seed=seed) if seed % 2 else spd(3, cond=3.0, seed=seed)
        lam_max = float(torch.linalg.eigvalsh(A).max())
        b = torch.randn(A.shape[-1], 3, dtype=DT, generator=torch.Generator().manual_seed(seed))
        x0 = torch.linalg.solve(A, b)  # start at the solution: the drift starts at 0
        for dt in (0.1 / lam_max, 1.9 / lam_max):
            OU(dt=dt, num_samples=3000, noise=1.0, seed=seed).solve(A, b, x0)
            op = Operator(lambda v, A=A: A @ v, A.shape[-1], dtype=DT)
            OU(dt=dt, num_samples=500, noise=1.0, seed=seed).solve(op, b)
            OU(dt=dt, num_samples=500, noise=0.0).solve(op, b)
    low_rank = LowRankPlusDiag(1e-3, torch.randn(30, 4, dtype=DT,
                                                 generator=torch.Generator().manual_seed(0)))
    OU(dt=0.01, num_samples=2000, noise=1.0, seed=0).solve(low_rank, torch.ones(30, dtype=DT))
