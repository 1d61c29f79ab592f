"""The sharpest test: with a Gaussian likelihood one natural step of size 1 in natural
coordinates lands on the exact optimum (VGP: the GP posterior; SVGP: Titsias' SGPR optimum)."""

from __future__ import annotations

import math

import pytest
import torch

from natvi import natural_gradient
from natvi.parameterizations import Natural
from tests.gp.problems import DT, JITTER, NOISE, data, dense_k, random_q, svgp, vgp


def natural_step(model, X, y, lr=1.0) -> None:
    """ξ ← ξ − lr · natural gradient of the negative ELBO (by hand, no optimiser)."""
    xi = model.q.xi()
    grads = torch.autograd.grad(-model.elbo(X, y), xi)
    step = natural_gradient(model.q.parameterization, xi, grads)
    with torch.no_grad():
        for p, s in zip(xi, step):
            p.sub_(lr * s)


def titsias(X, y, Z):
    """SGPR optimum q(u) = N(m_u, S_u) and the collapsed bound, densely and independently.

    ``S_u = K_zz (K_zz + σ⁻² K_zx K_xz)⁻¹ K_zz``, ``m_u = σ⁻² S_u K_zz⁻¹ K_zx y``, computed in the
    well-conditioned form ``S_u = L (I + σ⁻² B Bᵀ)⁻¹ Lᵀ``, ``B = L⁻¹ K_zx``.
    """
    Kzz = dense_k(Z, Z) + JITTER * torch.eye(len(Z), dtype=DT)
    Kzx = dense_k(Z, X)
    Lz = torch.linalg.cholesky(Kzz)
    B = torch.linalg.solve_triangular(Lz, Kzx, upper=False)
    S_v = torch.linalg.inv(torch.eye(len(Z), dtype=DT) + B @ B.T / NOISE)
    S_u = Lz @ S_v @ Lz.T
    m_u = Lz @ (S_v @ (B @ y)) / NOISE
    Qff = B.T @ B
    C = Qff + NOISE * torch.eye(len(X), dtype=DT)
    L = torch.linalg.cholesky(C)
    alpha = torch.cholesky_solve(y.unsqueeze(-1), L).squeeze(-1)
    log_marg = -0.5 * (y @ alpha) - L.diagonal().log().sum() - 0.5 * len(X) * math.log(2 * math.pi)
    bound = log_marg - 0.5 * (dense_k(X, X).diagonal().sum() - Qff.diagonal().sum()) / NOISE
    return m_u, S_u, bound


def _unwhiten(model, m, S):
    if not model.whiten:
        return m, S
    L = model._chol_prior()
    return L @ m, L @ S @ L.T


@pytest.mark.parametrize("whiten", [True, False])
@pytest.mark.parametrize("start", ["prior", "random"])
def test_one_natural_step_takes_vgp_to_exact_posterior(whiten, start):
    X, y = data(N=20)
    model = vgp(X, whiten=whiten)
    if start == "random":
        random_q(model)
    natural_step(model, X, y)
    K = dense_k(X, X) + JITTER * torch.eye(len(X), dtype=DT)
    C = K + NOISE * torch.eye(len(X), dtype=DT)
    L = torch.linalg.cholesky(C)
    mean = K @ torch.cholesky_solve(y.unsqueeze(-1), L).squeeze(-1)
    cov = K - K @ torch.cholesky_solve(K, L)
    with torch.no_grad():
        m, S = _unwhiten(model, *model.q.meancov())
        torch.testing.assert_close(m, mean, rtol=0, atol=1e-8)
        torch.testing.assert_close(S, cov, rtol=0, atol=1e-8)
        X_new = torch.linspace(-2.5, 2.5, 9, dtype=DT).unsqueeze(-1)
        K_nx = dense_k(X_new, X)
        f_mean, f_var = model.predict_f(X_new)
        torch.testing.assert_close(f_mean, K_nx @ torch.cholesky_solve(y.unsqueeze(-1), L)[:, 0],
                                   rtol=0, atol=1e-8)
        var = 1.3 - (K_nx * torch.cholesky_solve(K_nx.T, L).T).sum(-1)
        torch.testing.assert_close(f_var, var, rtol=0, atol=1e-8)


@pytest.mark.parametrize("whiten", [True, False])
@pytest.mark.parametrize("start", ["prior", "random"])
def test_one_natural_step_takes_svgp_to_titsias_optimum(whiten, start):
    X, y = data(N=40)
    Z = torch.linspace(-2, 2, 7, dtype=DT).unsqueeze(-1)
    model = svgp(X, Z, whiten=whiten, parameterization=Natural())
    if start == "random":
        random_q(model)
    natural_step(model, X, y)
    m_u, S_u, bound = titsias(X, y, Z)
    with torch.no_grad():
        m, S = _unwhiten(model, *model.q.meancov())
        torch.testing.assert_close(m, m_u, rtol=0, atol=1e-8)
        torch.testing.assert_close(S, S_u, rtol=0, atol=1e-8)
        torch.testing.assert_close(model.elbo(X, y), bound, rtol=1e-10, atol=1e-8)


def test_svgp_natural_step_with_minibatch_scaling_is_the_same_step():
    """num_data / B scaling: the full batch passed as 'a minibatch of itself' changes nothing,
    and a half batch scaled by N/B has the expected gradient in expectation (exactly: the mean of
    the two halves' gradients equals the full gradient)."""
    X, y = data(N=40)
    Z = torch.linspace(-2, 2, 5, dtype=DT).unsqueeze(-1)
    model = svgp(X, Z)
    random_q(model)
    xi = model.q.xi()
    full = torch.autograd.grad(-model.elbo(X, y), xi)
    halves = [
        torch.autograd.grad(-model.elbo(X[s], y[s], num_data=40), xi)
        for s in (slice(0, 20), slice(20, 40))
    ]
    for g, a, b in zip(full, *halves):
        torch.testing.assert_close(g, 0.5 * (a + b), rtol=1e-10, atol=1e-12)
