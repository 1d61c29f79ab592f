"""The closed-form stationary kernel blocks of ``natvi.gp.conditionals`` against GPyTorch's own
evaluation of the same kernel: values, every gradient, batch shapes, dtypes."""

from __future__ import annotations

import itertools

import gpytorch
import pytest
import torch

from natvi.gp.conditionals import _stationary_form, kernel_diag, kernel_matrix

F64 = torch.float64


def _gpytorch(k, X1, X2, diag=False):
    with gpytorch.settings.lazily_evaluate_kernels(False):
        return k(X1, X2, diag=diag).to_dense()


def _kernel(base, scale, batch, ard, dtype, seed):
    b = torch.Size(batch)
    kern = (gpytorch.kernels.RBFKernel(ard_num_dims=ard, batch_shape=b) if base == "rbf"
            else gpytorch.kernels.MaternKernel(nu=base, ard_num_dims=ard, batch_shape=b))
    k = gpytorch.kernels.ScaleKernel(kern, batch_shape=b) if scale else kern
    k = k.to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        kern.raw_lengthscale.copy_(torch.randn(kern.raw_lengthscale.shape, generator=g))
        if scale:
            k.raw_outputscale.copy_(torch.randn(k.raw_outputscale.shape, generator=g))
    return k


CASES = list(itertools.product(["rbf", 0.5, 1.5, 2.5], [True, False], [(), (3,)], [None, 4]))


@pytest.mark.parametrize("base,scale,batch,ard", CASES)
def test_closed_form_blocks_equal_gpytorchs(base, scale, batch, ard):
    k = _kernel(base, scale, batch, ard, F64, seed=len(str((base, scale, batch, ard))))
    assert _stationary_form(k, torch.zeros(1, 4, dtype=F64)) is not None
    g = torch.Generator().manual_seed(0)
    # far from the origin: the expanded |a|² + |b|² − 2a·b form must be centred
    X = 2.0 * torch.randn(30, 4, generator=g, dtype=F64) + 50.0
    # (no point of Z repeated in X: at a repeated pair of distinct tensors both evaluations
    # give a Matérn distance of √rounding, GPyTorch's and this one differently)
    Z = 2.0 * torch.randn(6, 4, generator=g, dtype=F64) + 50.0
    with torch.no_grad():
        for X1, X2 in ((X, Z), (Z, X), (Z, Z), (X, X)):
            got, want = kernel_matrix(k, X1, X2), _gpytorch(k, X1, X2)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
        got, want = kernel_diag(k, X), _gpytorch(k, X, X, diag=True)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-14, atol=0.0)
        # k(z, z) is the outputscale to the last bit
        K = kernel_matrix(k, Z, Z)
        assert torch.equal(K.diagonal(dim1=-2, dim2=-1), kernel_diag(k, Z))


@pytest.mark.parametrize("base,scale,batch,ard", CASES)
def test_closed_form_gradients_equal_gpytorchs(base, scale, batch, ard):
    k = _kernel(base, scale, batch, ard, F64, seed=7)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(25, 4, generator=g, dtype=F64)
    Z = torch.randn(5, 4, generator=g, dtype=F64).requires_grad_()  # no point repeated in X
    W = torch.randn(*batch, 25, 5, generator=g, dtype=F64)
    params = [Z, *k.parameters()]

    def loss(fn):
        # K(Z, Z) enters through its off-diagonal only: at r = 0 GPyTorch's Matérn gradient is
        # that of √(rounding) (it zeroes the diagonal only without gradients), the closed form's
        # is the exact 0 of a constant k(z, z)
        off = 1.0 - torch.eye(5, dtype=F64)
        return (W * fn(X, Z)).sum() + (off * fn(Z, Z).square()).sum()

    got = torch.autograd.grad(loss(lambda a, b: kernel_matrix(k, a, b)), params)
    want = torch.autograd.grad(loss(lambda a, b: _gpytorch(k, a, b)), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


def test_float32_closed_form_follows_the_float64_kernel():
    k64 = _kernel("rbf", True, (), 3, F64, seed=2)
    k32 = _kernel("rbf", True, (), 3, torch.float32, seed=2)
    X = torch.randn(40, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    with torch.no_grad():
        got = kernel_matrix(k32, X.float(), X[:8].float())
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), _gpytorch(k64, X, X[:8]), rtol=1e-5, atol=1e-6)


def test_other_kernels_and_active_dims_go_through_gpytorch():
    X = torch.randn(10, 3, dtype=F64)
    for k in (gpytorch.kernels.PeriodicKernel(),
              gpytorch.kernels.RBFKernel(active_dims=[0, 1]),
              gpytorch.kernels.ScaleKernel(gpytorch.kernels.LinearKernel()),
              gpytorch.kernels.RBFKernel() + gpytorch.kernels.MaternKernel()):
        k = k.to(F64)
        assert _stationary_form(k, X) is None
        with torch.no_grad():
            torch.testing.assert_close(kernel_matrix(k, X, X[:4]), _gpytorch(k, X, X[:4]))


def test_a_kernel_that_returns_its_stored_tensors_keeps_them_intact():
    """SVGP solves in the cross-covariance block's memory only when the block is natvi's own
    (the closed form); a GPyTorch kernel may hand back a tensor it keeps (here: precomputed)."""
    from natvi.gp import SVGP
    from natvi.likelihoods import Bernoulli

    g = torch.Generator().manual_seed(3)
    X = torch.randn(40, 2, generator=g, dtype=F64)
    Z = X[:6].clone()
    y = (X[:, 0] > 0).to(F64)
    rbf = gpytorch.kernels.RBFKernel().to(F64)
    with torch.no_grad():
        blocks = {(40, 6): _gpytorch(rbf, X, Z), (6, 6): _gpytorch(rbf, Z, Z)}
        diag = _gpytorch(rbf, X, X, diag=True)

    class Precomputed(gpytorch.kernels.Kernel):
        def forward(self, x1, x2, diag_=False, **params):
            if params.get("diag", diag_):
                return diag
            return blocks[(x1.shape[-2], x2.shape[-2])]

    kept = {k: v.clone() for k, v in blocks.items()}
    losses = []
    for kernel in (Precomputed(), rbf):
        model = SVGP(kernel, Bernoulli(), Z, learn_inducing=False)
        for p in kernel.parameters():
            p.requires_grad_(False)
        losses.append(model.elbo(X, y))
    for k in blocks:
        assert torch.equal(blocks[k], kept[k])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=0)
