"""natural_gradient against an independent reference: the Fisher in ξ built by autodiff as the
Hessian of ξ' ↦ KL(q_ξ ‖ q_ξ') at ξ' = ξ, solved densely."""

from __future__ import annotations

import pytest
import torch

import natvi
from natvi.parameterizations import (
    BUILTIN,
    DiagMeanLogScale,
    MeanCholesky,
    Natural,
    NaturalTril,
)
from tests.gaussians import DiagMeanLogPrecision, MeanPrecisionCholesky, random_meancov

CUSTOM = (MeanPrecisionCholesky, DiagMeanLogPrecision)
ALL = BUILTIN + CUSTOM


def coordinate_kinds(p):
    """How each coordinate's free entries are laid out: vector, symmetric or lower triangular."""
    if p.diagonal:
        return ("vec", "vec")
    if p.names[1] in ("theta2", "eta2"):
        return ("vec", "sym")
    return ("vec", "tril")


class Flat:
    """Maps ξ (matrices) ↔ u (a vector of free coordinates): vech for symmetric/triangular."""

    def __init__(self, xi, kinds):
        self.shapes = [x.shape for x in xi]
        self.kinds = kinds

    def unflatten(self, u):
        out, k = [], 0
        for shape, kind in zip(self.shapes, self.kinds):
            if kind == "vec":
                n = shape.numel()
                out.append(u[k : k + n].reshape(shape))
            else:
                M = shape[-1]
                r, c = torch.tril_indices(M, M)
                n = shape[:-2].numel() * len(r)
                select = torch.zeros(len(r), M * M, dtype=u.dtype)
                select[torch.arange(len(r)), r * M + c] = 1.0
                mat = (u[k : k + n].reshape(-1, len(r)) @ select).reshape(-1, M, M)
                if kind == "sym":
                    mat = mat + mat.mT - torch.diag_embed(mat.diagonal(dim1=-2, dim2=-1))
                out.append(mat.reshape(shape))
            k += n
        return tuple(out)

    def flatten(self, xi):
        parts = []
        for x, kind in zip(xi, self.kinds):
            if kind == "vec":
                parts.append(x.reshape(-1))
            else:
                M = x.shape[-1]
                r, c = torch.tril_indices(M, M)
                parts.append(x.reshape(-1, M, M)[:, r, c].reshape(-1))
        return torch.cat(parts)


def smooth_loss(xi):
    """A smooth loss that treats every matrix entry differently (not symmetric in i, j)."""
    total = 0.0
    for k, x in enumerate(xi):
        w = torch.arange(x.numel(), dtype=x.dtype).reshape(x.shape) / x.numel() + 0.3 * k
        total = total + (torch.sin(w * x + 0.1) * (1 + w)).sum() + 0.05 * (x**3).sum()
    return total


def reference_natural_gradient(p, xi):
    flat = Flat(xi, coordinate_kinds(p))
    u0 = flat.flatten(xi)
    theta0 = tuple(t.detach() for t in p.to_natural(*xi))

    def kl(u):
        return p.family.kl(theta0, p.to_natural(*flat.unflatten(u))).sum()

    F = torch.autograd.functional.hessian(kl, u0)
    g = torch.func.grad(lambda u: smooth_loss(flat.unflatten(u)))(u0)
    return flat.unflatten(torch.linalg.solve(F, g))


@pytest.mark.parametrize("batch", [(), (2,), (2, 3)], ids=["single", "batch2", "batch2x3"])
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_natural_gradient_equals_dense_fisher_solve(cls, batch):
    p = cls()
    m, S = random_meancov(batch, 3, diagonal=p.diagonal, cond=20.0)
    xi = tuple(p.from_meancov(m, S))
    grad_xi = torch.func.grad(lambda xs: smooth_loss(xs))(xi)
    got = natvi.natural_gradient(p, xi, grad_xi)
    want = reference_natural_gradient(p, xi)
    for name, a, b in zip(p.names, got, want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8, msg=f"{cls.__name__}.{name}")


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_natural_gradient_in_theta_is_gradient_in_eta(cls):
    """Pushed back to θ, every parameterisation's natural gradient is the same tangent ∇_η L."""
    p = cls()
    m, S = random_meancov((2,), 4, diagonal=p.diagonal)
    xi = tuple(p.from_meancov(m, S))
    grad_xi = torch.func.grad(smooth_loss)(xi)
    nat_xi = natvi.natural_gradient(p, xi, grad_xi)
    _, nat_theta = torch.func.jvp(p.to_natural, xi, nat_xi)
    grad_eta = natvi.expectation_gradient(p, xi, grad_xi)
    for a, b in zip(nat_theta, grad_eta):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_upper_triangle_of_triangular_gradient_is_ignored():
    """Entries above the diagonal of L are not coordinates; their gradient must not matter."""
    p = MeanCholesky()
    xi = p.from_meancov(*random_meancov((), 4))
    g = torch.func.grad(smooth_loss)(tuple(xi))
    junk = (g[0], g[1] + torch.randn(4, 4, dtype=torch.float64).triu(1))
    a = natvi.natural_gradient(p, xi, g)
    b = natvi.natural_gradient(p, xi, junk)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_natural_shortcut_needs_no_jvp(monkeypatch):
    p = Natural()

    def boom(*args, **kwargs):
        raise AssertionError("Natural must not take a JVP")

    monkeypatch.setattr(torch.func, "jvp", boom)
    xi = p.from_meancov(*random_meancov((), 3))
    natvi.natural_gradient(
        p, xi, (torch.ones(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    )


@pytest.mark.parametrize("cls", [Natural, NaturalTril, DiagMeanLogScale], ids=lambda c: c.__name__)
def test_float32_agrees_with_float64(cls):
    p = cls()
    m, S = random_meancov((2,), 4, diagonal=p.diagonal)
    xi64 = tuple(p.from_meancov(m, S))
    g64 = torch.func.grad(smooth_loss)(xi64)
    want = natvi.natural_gradient(p, xi64, g64)
    got = natvi.natural_gradient(p, [x.float() for x in xi64], [g.float() for g in g64])
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-3)


def test_result_is_detached_and_follows_dtype():
    p = MeanCholesky()
    m, L = p.from_meancov(*random_meancov((), 3))
    m.requires_grad_(True)
    out = natvi.natural_gradient(p, (m, L), (torch.ones_like(m), torch.zeros_like(L)))
    assert all(not t.requires_grad and t.dtype == torch.float64 for t in out)


def test_nan_gradient_is_named():
    p = Natural()
    xi = p.from_meancov(*random_meancov((), 3))
    bad = torch.full((3,), float("nan"), dtype=torch.float64)
    with pytest.raises(ValueError, match="gradient of theta1 contains NaN"):
        natvi.natural_gradient(p, xi, (bad, torch.zeros(3, 3, dtype=torch.float64)))


def test_wrong_gradient_shape_is_named():
    p = Natural()
    xi = p.from_meancov(*random_meancov((), 3))
    with pytest.raises(ValueError, match="grad_xi for 'theta2' has shape"):
        natvi.natural_gradient(p, xi, (xi[0], torch.zeros(2, 2, dtype=torch.float64)))


def test_wrong_number_of_coordinates():
    with pytest.raises(ValueError, match="xi must hold 2 tensors"):
        natvi.natural_gradient(Natural(), (torch.zeros(3),), (torch.zeros(3),))


def test_non_negative_definite_theta2_is_named():
    p = Natural()
    theta1 = torch.zeros(3, dtype=torch.float64)
    theta2 = torch.eye(3, dtype=torch.float64)  # precision −2·θ2 = −2I: not PD
    with pytest.raises(ValueError, match="precision −2·theta2 is not positive definite"):
        natvi.natural_gradient(p, (theta1, theta2), (theta1, theta2))
