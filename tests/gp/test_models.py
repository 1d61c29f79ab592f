"""SVGP / VGP behaviour: KL, equivalent forms, multi-latent shapes, parameter groups, errors."""

from __future__ import annotations

import gpytorch
import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from natvi.gp import SVGP, VGP
from natvi.likelihoods import Bernoulli, Gaussian, HeteroskedasticGaussian, Softmax
from natvi.parameterizations import DiagMeanLogScale, MeanCholesky, Natural
from tests.gp.problems import DT, JITTER, data, dense_k, random_q, rbf, svgp

Z5 = torch.linspace(-2, 2, 5, dtype=DT).unsqueeze(-1)


@pytest.mark.parametrize("whiten", [True, False])
@pytest.mark.parametrize("q_diag", [False, True])
def test_prior_kl_matches_torch_distributions(whiten, q_diag):
    X, _ = data()
    model = svgp(X, Z5, whiten=whiten, q_diag=q_diag)
    random_q(model)
    with torch.no_grad():
        m, S = model.q.meancov()
        S = torch.diag_embed(S) if q_diag else S
        K = torch.eye(5, dtype=DT) if whiten else dense_k(Z5, Z5) + JITTER * torch.eye(5, dtype=DT)
        ref = kl_divergence(MultivariateNormal(m, S), MultivariateNormal(torch.zeros(5, dtype=DT), K))
        torch.testing.assert_close(model.prior_kl(), ref, rtol=1e-10, atol=1e-12)


def test_prior_is_the_starting_point_whitened_and_not():
    X, _ = data()
    for whiten in (True, False):
        assert abs(float(svgp(X, Z5, whiten=whiten).prior_kl().detach())) < 1e-10


def test_predict_f_matches_dense_conditional_unwhitened():
    X, _ = data()
    model = svgp(X, Z5, whiten=False, parameterization=MeanCholesky())
    random_q(model)
    Xs = torch.linspace(-3, 3, 11, dtype=DT).unsqueeze(-1)
    with torch.no_grad():
        m, S = model.q.meancov()
        Kzz = dense_k(Z5, Z5) + JITTER * torch.eye(5, dtype=DT)
        A = torch.linalg.solve(Kzz, dense_k(Z5, Xs))  # K_zz⁻¹ K_zx, dense reference
        mean = A.T @ m
        cov = dense_k(Xs, Xs) - A.T @ Kzz @ A + A.T @ S @ A
        f_mean, f_var = model.predict_f(Xs)
        torch.testing.assert_close(f_mean, mean, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(f_var, cov.diagonal(), rtol=1e-9, atol=1e-10)


def test_diagonal_q_equals_full_q_with_a_diagonal_covariance():
    X, y = data()
    for whiten in (True, False):
        diag = svgp(X, Z5, whiten=whiten, q_diag=True, parameterization=DiagMeanLogScale())
        random_q(diag)
        full = svgp(X, Z5, whiten=whiten)
        with torch.no_grad():
            m, s = diag.q.meancov()
            full.q.set_meancov(m, torch.diag_embed(s))
            torch.testing.assert_close(diag.elbo(X, y), full.elbo(X, y), rtol=1e-10, atol=1e-10)


def test_whitened_and_unwhitened_agree_for_the_same_q_of_u():
    X, y = data()
    Xs = torch.linspace(-3, 3, 7, dtype=DT).unsqueeze(-1)
    w, u = svgp(X, Z5, whiten=True), svgp(X, Z5, whiten=False)
    random_q(w)
    with torch.no_grad():
        L = w._chol_prior()
        m, S = w.q.meancov()
        u.q.set_meancov(L @ m, L @ S @ L.T)
        torch.testing.assert_close(w.elbo(X, y), u.elbo(X, y), rtol=1e-10, atol=1e-10)
        for a, b in zip(w.predict_f(Xs), u.predict_f(Xs)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_vgp_equals_svgp_with_inducing_points_at_the_data():
    X, y = data(N=12)
    v = VGP(X, kernel=rbf(), likelihood=Bernoulli(), whiten=True, jitter=JITTER)
    s = SVGP(kernel=rbf(), likelihood=Bernoulli(), inducing_points=X, jitter=JITTER)
    random_q(v)
    with torch.no_grad():
        s.q.set_meancov(*v.q.meancov())
        yb = (y > 0).to(DT)
        # at the training inputs SVGP's conditional subtracts K_xx (K_xx + jitter)⁻¹ K_xx ≈ K_xx
        torch.testing.assert_close(v.elbo(X, yb), s.elbo(X, yb), rtol=1e-5, atol=1e-5)
        Xs = torch.linspace(-3, 3, 7, dtype=DT).unsqueeze(-1)
        for a, b in zip(v.predict_f(Xs), s.predict_f(Xs)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("batch_kernel", [True, False])
def test_multi_latent_marginals_are_independent_single_latent_models(batch_kernel):
    X, y = data(N=25)
    k = rbf(batch=(2,)) if batch_kernel else rbf()
    model = SVGP(kernel=k, likelihood=HeteroskedasticGaussian(), inducing_points=Z5, num_latent=2,
                 jitter=JITTER)
    random_q(model)
    assert model.q.batch_shape == (2,)
    f_mean, f_var = model.predict_f(X)
    assert f_mean.shape == f_var.shape == (25, 2)
    singles = []
    with torch.no_grad():
        m, S = model.q.meancov()
        for l in range(2):
            one = svgp(X, Z5, likelihood=Gaussian())
            one.q.set_meancov(m[l], S[l])
            singles.append(one)
            fm, fv = one.predict_f(X)
            torch.testing.assert_close(f_mean[:, l], fm, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(f_var[:, l], fv, rtol=1e-10, atol=1e-12)
        kl = sum(one.prior_kl() for one in singles)
        ve = HeteroskedasticGaussian().variational_expectations(f_mean, f_var, y).sum()
        torch.testing.assert_close(model.elbo(X, y), ve - kl, rtol=1e-10, atol=1e-10)


def test_softmax_model_shapes_and_gradients():
    X, _ = data(N=30, D=2)
    y = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(0))
    model = SVGP(kernel=rbf(batch=(3,)), likelihood=Softmax(3), inducing_points=X[:6],
                 num_latent=3)
    elbo = model.elbo(X, y)
    elbo.backward()
    assert all(p.grad is not None for p in model.variational_parameters())
    p, var = model.predict_y(X)
    assert p.shape == var.shape == (30, 3)
    torch.testing.assert_close(p.sum(-1), torch.ones(30, dtype=DT))


def test_parameter_groups_are_disjoint_and_complete():
    X, _ = data()
    for learn in (True, False):
        model = svgp(X, Z5, learn_inducing=learn)
        hyper = {id(p) for p in model.hyperparameters()}
        var = {id(p) for p in model.variational_parameters()}
        assert not hyper & var
        assert hyper | var == {id(p) for p in model.parameters()}
        assert (id(model.inducing_points) in hyper) == learn
        assert len(var) == 2


def test_dtype_follows_inducing_points_and_jitter_defaults():
    X = torch.randn(20, 2)
    model = SVGP(kernel=gpytorch.kernels.RBFKernel(), likelihood=Gaussian(),
                 inducing_points=X[:4].clone())
    elbo = model.elbo(X, torch.randn(20))
    assert elbo.dtype == torch.float32 and model.likelihood.raw_noise.dtype == torch.float32
    assert model._jitter(torch.float32) == 1e-4 and model._jitter(torch.float64) == 1e-6


def test_q_diag_follows_the_parameterization_unless_given():
    X, _ = data()
    for cls, args in ((SVGP, {"inducing_points": Z5}), (VGP, {"X": X})):
        diag = cls(kernel=rbf(), likelihood=Gaussian(noise=0.1), parameterization=DiagMeanLogScale(),
                   **args)
        assert diag.q_diag and diag.q.meancov()[1].dim() == 1
        full = cls(kernel=rbf(), likelihood=Gaussian(noise=0.1), **args)
        assert not full.q_diag and isinstance(full.q.parameterization, Natural)
    with pytest.raises(ValueError, match="q_diag=False but parameterization"):
        SVGP(kernel=rbf(), likelihood=Gaussian(noise=0.1), inducing_points=Z5, q_diag=False,
             parameterization=DiagMeanLogScale())


def test_bad_arguments_raise_clear_errors():
    X, y = data()
    with pytest.raises(ValueError, match="num_latent"):
        SVGP(kernel=rbf(), likelihood=Softmax(3), inducing_points=Z5)
    with pytest.raises(ValueError, match="q_diag"):
        svgp(X, Z5, q_diag=True, parameterization=Natural())
    with pytest.raises(ValueError, match="batch_shape"):
        SVGP(kernel=rbf(batch=(4,)), likelihood=Softmax(3), inducing_points=Z5, num_latent=3)
    with pytest.raises(ValueError, match="inducing_points"):
        svgp(X, torch.ones(5, dtype=DT))
    model = svgp(X, Z5, likelihood=Bernoulli())
    with pytest.raises(ValueError, match="0 and 1"):
        model.elbo(X, y)
    with pytest.raises(ValueError, match="rows"):
        model.elbo(X, y[:3])
    v = VGP(X, kernel=rbf(), likelihood=Gaussian())
    with pytest.raises(ValueError, match="training inputs"):
        v.elbo(X[:5], y[:5])


def test_hand_written_reverse_mode_of_the_marginals_passes_gradcheck():
    from natvi.gp.conditionals import _Marginals

    g = torch.Generator().manual_seed(0)
    M, N = 4, 6
    B = torch.randn(2, M, M, generator=g, dtype=DT)
    L = torch.linalg.cholesky(B @ B.mT + M * torch.eye(M, dtype=DT)).requires_grad_()
    K = torch.randn(2, M, N, generator=g, dtype=DT, requires_grad=True)
    m = torch.randn(2, M, generator=g, dtype=DT, requires_grad=True)
    C = torch.randn(2, M, M, generator=g, dtype=DT)
    D = (C + C.mT).requires_grad_()

    def fn(L, K, m, D):  # tril / symmetric inputs, as in the model (S̃ = D + I)
        return _Marginals.apply(L.tril(), K, m, 0.5 * (D + D.mT) + torch.eye(M, dtype=DT))

    assert torch.autograd.gradcheck(fn, (L, K, m, D))


@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("q_batch", [(), (2,)])
def test_marginals_with_the_kl_in_the_same_node_match_autodiff(diagonal, q_batch):
    """The fused KL: values and every gradient (L, K, m̃, S̃, log det) equal to autodiff of the
    marginals written out plus :func:`whitened_kl`, with a q shared across a batch of two
    kernels (q_batch ()) or one q per kernel; and gradcheck."""
    from natvi.gp.conditionals import _Marginals

    g = torch.Generator().manual_seed(3)
    M, N = 4, 7
    B = torch.randn(2, M, M, generator=g, dtype=DT)
    L0 = torch.linalg.cholesky(B @ B.mT + M * torch.eye(M, dtype=DT))
    K0 = torch.randn(2, M, N, generator=g, dtype=DT)
    m0 = torch.randn(*q_batch, M, generator=g, dtype=DT)
    C = torch.randn(*q_batch, M, M, generator=g, dtype=DT)
    S0 = (torch.rand(*q_batch, M, generator=g, dtype=DT) + 0.5 if diagonal
          else C @ C.mT / M + 0.5 * torch.eye(M, dtype=DT))
    ld0 = torch.randn(q_batch, generator=g, dtype=DT)
    w = torch.randn(3, generator=g, dtype=DT)

    def fused(L, K, m, S, ld):
        mean, var, kl = _Marginals.apply(L.tril(), K, m, S, ld, diagonal)
        return mean, var, kl

    def reference(L, K, m, S, ld):
        A = torch.linalg.solve_triangular(L.tril(), K, upper=False)
        D = torch.diag_embed(S - 1.0) if diagonal else S - torch.eye(M, dtype=DT)
        mean = (A * m.unsqueeze(-1)).sum(-2)
        var = (A * (D @ A)).sum(-2)
        trace = S.sum(-1) if diagonal else S.diagonal(dim1=-2, dim2=-1).sum(-1)
        return mean, var, 0.5 * (trace + (m * m).sum(-1) - M - ld).sum()

    def scalar(out):
        mean, var, kl = out
        return w[0] * mean.sin().sum() + w[1] * var.square().sum() + w[2] * kl

    inputs = [t.clone().requires_grad_() for t in (L0, K0, m0, S0, ld0)]
    got = torch.autograd.grad(scalar(fused(*inputs)), inputs)
    want = torch.autograd.grad(scalar(reference(*inputs)), inputs)
    for a, b in zip(fused(*inputs), reference(*inputs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(lambda *t: scalar(fused(*t)), inputs)


def test_marginals_reverse_mode_with_fixed_kernel_blocks_gives_the_same_q_gradients():
    """Fixed hyperparameters and Z (L, K without grad): the skipped products change nothing."""
    from natvi.gp.conditionals import _Marginals

    g = torch.Generator().manual_seed(1)
    M, N = 5, 9
    B = torch.randn(M, M, generator=g, dtype=DT)
    L = torch.linalg.cholesky(B @ B.mT + M * torch.eye(M, dtype=DT))
    K = torch.randn(M, N, generator=g, dtype=DT)
    m = torch.randn(M, generator=g, dtype=DT)
    C = torch.randn(M, M, generator=g, dtype=DT)
    D = C + C.mT
    w = torch.randn(2, N, generator=g, dtype=DT)

    def q_grads(requires_kernel_grad):
        Lr, Kr = (t.clone().requires_grad_(requires_kernel_grad) for t in (L, K))
        mr, Dr = m.clone().requires_grad_(), D.clone().requires_grad_()
        mean, var = _Marginals.apply(Lr, Kr, mr, Dr + torch.eye(M, dtype=DT))
        return torch.autograd.grad((w[0] * mean + w[1] * var).sum(), (mr, Dr))

    for a, b in zip(q_grads(False), q_grads(True)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_marginals_solved_in_the_kernel_blocks_memory_equal_the_copying_solve():
    """``overwrite_K``: the same marginals and q gradients, K then holds A; a K that needs a
    gradient is left alone."""
    from natvi.gp.conditionals import marginals

    g = torch.Generator().manual_seed(2)
    M, N = 5, 11
    B = torch.randn(M, M, generator=g, dtype=DT)
    L = torch.linalg.cholesky(B @ B.mT + M * torch.eye(M, dtype=DT))
    K = torch.randn(N, M, generator=g, dtype=DT).mT  # column-major, as SVGP hands it over
    kxx = torch.rand(N, generator=g, dtype=DT) + 2.0
    C = torch.randn(M, M, generator=g, dtype=DT)
    S = C @ C.mT / M + 0.5 * torch.eye(M, dtype=DT)
    m = torch.randn(M, generator=g, dtype=DT)
    out = []
    for overwrite in (False, True):
        Kc = K.mT.clone().mT
        m_, S_ = m.clone().requires_grad_(), S.clone().requires_grad_()
        mean, var = marginals(L, Kc, kxx, m_, S_, False, overwrite_K=overwrite)
        grads = torch.autograd.grad((mean.sin() + var.square()).sum(), (m_, S_))
        out.append((mean.detach(), var.detach(), *grads))
        if overwrite:
            torch.testing.assert_close(Kc, torch.linalg.solve_triangular(L, K, upper=False))
        else:
            assert torch.equal(Kc, K)
    for a, b in zip(*out):
        assert torch.equal(a, b)
    Kg = K.mT.clone().mT.requires_grad_()
    marginals(L, Kg, kxx, m, S, False, overwrite_K=True)
    assert torch.equal(Kg.detach(), K)


@pytest.mark.parametrize("batch", [(), (3,)])
def test_whitened_kl_equals_torch_kl_divergence_with_its_gradients(batch):
    """``whitened_kl`` (its unbatched four-operation form and the batched one) against
    ``torch.distributions.kl_divergence`` to N(0, I): value and gradients in m̃ and S̃."""
    from torch.distributions import MultivariateNormal, kl_divergence

    from natvi.gp.conditionals import whitened_kl

    g = torch.Generator().manual_seed(5)
    M = 4
    C = torch.randn(*batch, M, M, generator=g, dtype=DT)
    S0 = C @ C.mT / M + 0.5 * torch.eye(M, dtype=DT)
    m0 = torch.randn(*batch, M, generator=g, dtype=DT)
    m, S = m0.clone().requires_grad_(), S0.clone().requires_grad_()
    kl = whitened_kl(m, S, torch.logdet(S), False)
    prior = MultivariateNormal(torch.zeros(M, dtype=DT), torch.eye(M, dtype=DT))
    m2, S2 = m0.clone().requires_grad_(), S0.clone().requires_grad_()
    ref = kl_divergence(MultivariateNormal(m2, 0.5 * (S2 + S2.mT)), prior).sum()
    torch.testing.assert_close(kl, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(kl, (m, S)), torch.autograd.grad(ref, (m2, S2))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
