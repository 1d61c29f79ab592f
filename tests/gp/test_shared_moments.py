"""One factorisation per step: Natural.to_moments (one Cholesky, closed-form backward) against
the autodiff path, and the ∇_η L its backward records against natvi.natural_gradient's own."""

from __future__ import annotations

import pytest
import torch

from natvi.likelihoods import Bernoulli, Softmax
from natvi.natgrad import expectation_gradient
from natvi.parameterizations import Natural, Parameterization, recorded_expectation_gradient
from tests.gp.problems import DT, data, random_q, svgp


def _random_natural(batch=(), M=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(*batch, M, M, generator=g, dtype=DT) / M**0.5
    P = B @ B.mT + 0.5 * torch.eye(M, dtype=DT)
    theta1 = torch.randn(*batch, M, generator=g, dtype=DT)
    return theta1.requires_grad_(), (-0.5 * P).requires_grad_()


@pytest.mark.parametrize("batch", [(), (3,)])
@pytest.mark.parametrize("outputs", ["m S ld", "m", "S", "ld", "m ld"])
def test_moments_values_and_gradients_equal_the_autodiff_path(batch, outputs):
    """Every subset of the outputs (an unused one reaches backward as None)."""
    theta1, theta2 = _random_natural(batch)
    g = torch.Generator().manual_seed(5)
    w_m = torch.randn(theta1.shape, generator=g, dtype=DT)
    w_S = torch.randn(theta2.shape, generator=g, dtype=DT)  # not symmetric on purpose
    w_ld = torch.randn(batch, generator=g, dtype=DT)

    def loss(moments):
        m, S, ld = moments
        terms = {"m": (w_m * m).sum(), "S": (w_S * S).sum(), "ld": (w_ld * ld).sum()}
        return sum(terms[k] for k in outputs.split())

    fused = Natural().to_moments(theta1, theta2)
    ref = Parameterization.to_moments(Natural(), theta1, theta2)  # generic: autodiff
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(loss(fused), (theta1, theta2))
    want = torch.autograd.grad(loss(ref), (theta1, theta2))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


def _models():
    X, y = data(N=40, D=2)
    Z = X[:7].clone()
    yield "gaussian-whitened", svgp(X, Z, whiten=True, parameterization=Natural()), X, y
    yield "gaussian-unwhitened", svgp(X, Z, whiten=False, parameterization=Natural()), X, y
    yb = (y > 0).to(DT)
    yield "bernoulli-unwhitened", svgp(X, Z, whiten=False, parameterization=Natural(),
                                       likelihood=Bernoulli()), X, yb
    yc = (y > 0).long() + (y > 0.8).long()
    yield "softmax-whitened", svgp(X, Z, whiten=True, parameterization=Natural(),
                                   likelihood=Softmax(3), num_latent=3), X, yc


@pytest.mark.parametrize("case", list(range(4)))
def test_recorded_expectation_gradient_equals_the_autodiff_natural_gradient(case):
    name, model, X, y = list(_models())[case]
    random_q(model)
    xi = model.q.xi()
    grads = torch.autograd.grad(-model.elbo(X, y), xi)
    recorded = recorded_expectation_gradient(*xi, *grads)
    assert recorded is not None, name
    assert expectation_gradient(Natural(), xi, grads)[0] is recorded[0]  # the shortcut is taken
    reference = expectation_gradient(Natural(), tuple(x.detach().clone() for x in xi), grads)
    for a, b in zip(recorded, reference):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_recorded_gradient_is_refused_unless_it_is_the_whole_unchanged_gradient():
    _, model, X, y = next(iter(_models()))
    random_q(model)
    xi = model.q.xi()
    (-model.elbo(X, y)).backward()
    first = tuple(p.grad.clone() for p in xi)
    assert recorded_expectation_gradient(*xi, *first) is not None
    (-model.elbo(X, y)).backward()  # accumulated: 2 × the gradient, not one pass's
    assert recorded_expectation_gradient(*xi, *(p.grad for p in xi)) is None
    model.zero_grad()
    (-model.elbo(X, y)).backward()
    with torch.no_grad():
        xi[0].add_(0.0)  # modified in place since the forward pass
    assert recorded_expectation_gradient(*xi, *(p.grad for p in xi)) is None
    twin = tuple(x.detach().clone() for x in xi)
    assert recorded_expectation_gradient(*twin, *first) is None  # other tensors
    model.zero_grad(set_to_none=True)
    (-model.elbo(X, y)).backward()
    with torch.no_grad():  # .grad written in place (were it backward's own tensor, its version)
        xi[1].grad.mul_(2.0)
    assert recorded_expectation_gradient(*xi, *(p.grad for p in xi)) is None


def test_mean_cholesky_moments_equal_the_generic_path():
    from natvi.parameterizations import MeanCholesky

    g = torch.Generator().manual_seed(3)
    m = torch.randn(2, 5, generator=g, dtype=DT, requires_grad=True)
    B = torch.randn(2, 5, 5, generator=g, dtype=DT)
    L = torch.linalg.cholesky(B @ B.mT + torch.eye(5, dtype=DT)).requires_grad_()
    w = torch.randn(2, generator=g, dtype=DT)
    fast = MeanCholesky().to_moments(m, L)
    ref = Parameterization.to_moments(MeanCholesky(), m, L)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad((w * fast[2]).sum() + fast[1].sum(), (m, L), allow_unused=True)
    want = torch.autograd.grad((w * ref[2]).sum() + ref[1].sum(), (m, L), allow_unused=True)
    torch.testing.assert_close(got[1].tril(), want[1].tril(), rtol=1e-10, atol=1e-10)


def test_moments_reuse_the_factor_of_an_accepted_proposal_bit_for_bit(monkeypatch):
    from natvi import _moments as pz  # where the factorisation lives

    theta1, theta2 = (t.detach() for t in _random_natural((2,), M=5, seed=4))
    fresh = Natural().to_moments(theta1, theta2)
    assert Natural().in_domain(theta1, theta2)

    def no_cholesky(*args):
        raise AssertionError("factorised again")

    with monkeypatch.context() as mp:
        mp.setattr(pz, "cholesky", no_cholesky)
        reused = Natural().to_moments(theta1, theta2)
        with pytest.raises(AssertionError, match="factorised again"):
            other = theta2.clone()
            other[0, 0, 0] -= 1e-3  # another matrix: factorised
            Natural().to_moments(theta1, other)
    for a, b in zip(fresh, reused):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_round_trip_bound_never_passes_a_matrix_whose_cholesky_fails(dtype):
    """The cheap sufficient condition of in_domain agrees with the Cholesky it replaces."""
    from natvi._moments import _round_trip_ok

    g = torch.Generator().manual_seed(0)
    skipped = 0
    for trial in range(60):
        M = 3 + trial % 20
        B = torch.randn(M, M, generator=g, dtype=torch.float64)
        P = (B @ B.mT * 10.0 ** (trial % 7 - 3) + 1e-3 * torch.eye(M, dtype=torch.float64))
        m = torch.randn(M, generator=g, dtype=torch.float64) * 10.0 ** (trial % 11 - 2)
        P, m = P.to(dtype), m.to(dtype)
        L = torch.linalg.cholesky(P)
        S = 0.5 * (torch.cholesky_inverse(L) + torch.cholesky_inverse(L).mT)
        mmT = m.unsqueeze(-1) * m.unsqueeze(-2)
        by_cholesky = bool(torch.linalg.cholesky_ex((S + mmT) - mmT)[1] == 0)
        assert _round_trip_ok(P, S, m) == by_cholesky
        M_, u = P.shape[-1], torch.finfo(dtype).eps / 2
        skipped += bool(P.trace() * (S.trace() + m @ m) < 1.0 / (8 * (M_ + 2) ** 2 * u))
    if dtype == torch.float64:
        assert skipped > 0  # the shortcut is taken in float64


@pytest.mark.parametrize("batch", [(), (2,)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e200])
def test_round_trip_check_refuses_a_non_finite_or_overflowing_mean(batch, bad):
    """in_domain leaves the finiteness of m = S θ1 to the round-trip check."""
    from natvi._moments import _round_trip_ok

    theta1, theta2 = (t.detach() for t in _random_natural(batch, M=5, seed=2))
    P = -(theta2 + theta2.mT)
    S = torch.cholesky_inverse(torch.linalg.cholesky(P))
    m = torch.linalg.solve(P, theta1.unsqueeze(-1)).squeeze(-1)
    assert _round_trip_ok(P, S, m)
    m[..., 1] = bad
    assert not _round_trip_ok(P, S, m)
    far = theta1.clone()
    far[..., 1] = bad
    assert not Natural().in_domain(far, theta2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e200])
def test_round_trip_check_refuses_a_non_finite_mean_when_the_cholesky_backend_misses_nan(
        monkeypatch, bad):
    """A backend whose Cholesky reports no failure for a NaN pivot (LAPACK does; not every GPU
    solver is documented to): a non-finite m is still refused, without relying on it."""
    from natvi._moments import _round_trip_ok

    real = torch.linalg.cholesky_ex

    def blind(A, **kw):
        L, info = real(A, **kw)
        return L, torch.where(torch.isnan(A).flatten(-2).any(-1), 0, info)

    theta1, theta2 = (t.detach() for t in _random_natural((), M=5, seed=3))
    P = -(theta2 + theta2.mT)
    S = torch.cholesky_inverse(torch.linalg.cholesky(P))
    m = torch.linalg.solve(P, theta1.unsqueeze(-1)).squeeze(-1)
    monkeypatch.setattr(torch.linalg, "cholesky_ex", blind)
    assert _round_trip_ok(P, S, m)
    m[1] = bad
    assert not _round_trip_ok(P, S, m)
    S_bad = S.clone()
    S_bad[0, 0] = float("nan")
    assert not _round_trip_ok(P, S_bad, m.nan_to_num(0.0, 0.0, 0.0))


@pytest.mark.parametrize("blind", [False, True])
@pytest.mark.parametrize("batch", [(), (2,)])
@pytest.mark.parametrize("diagonal", [False, True])
def test_natural_in_domain_refuses_every_non_finite_theta(monkeypatch, blind, batch, diagonal):
    """Natural coordinates take no finiteness pass before the Cholesky: a NaN or ±inf anywhere
    in θ1 or θ2 is refused all the same — also by a Cholesky backend that misses NaN pivots."""
    from natvi.parameterizations import DiagNatural

    if blind:
        real = torch.linalg.cholesky_ex

        def blind_cholesky(A, **kw):
            L, info = real(A, **kw)
            return L, torch.where(torch.isnan(A).flatten(-2).any(-1), 0, info)

        monkeypatch.setattr(torch.linalg, "cholesky_ex", blind_cholesky)
    M_ = 4
    theta1, theta2 = (t.detach() for t in _random_natural(batch, M=M_, seed=4))
    p = Natural()
    if diagonal:
        p, theta2 = DiagNatural(), theta2.diagonal(dim1=-2, dim2=-1).clone()
    assert p.in_domain(theta1, theta2)
    for bad in (float("nan"), float("inf"), -float("inf")):
        for i in range(M_):
            t1 = theta1.clone()
            t1[..., i] = bad
            assert not p.in_domain(t1, theta2), (bad, "theta1", i)
            for j in ([i] if diagonal else range(M_)):
                t2 = theta2.clone()
                if diagonal:
                    t2[..., i] = bad
                else:
                    t2[..., i, j] = bad
                assert not p.in_domain(theta1, t2), (bad, "theta2", i, j)


@pytest.mark.parametrize("fused", [True, False])
def test_a_no_grad_pass_between_steps_leaves_the_factor_to_the_training_pass(monkeypatch, fused):
    """in_domain's factor of the accepted q: a prediction (no gradient) gets copies of S and m
    and leaves it; the training pass after it takes it (no Cholesky of its own)."""
    import natvi._moments as moments
    from natvi.optim import NaturalGradient

    X, y = data(N=30, seed=1)
    y = (y > 0).to(DT)

    def build():  # (the kernel learns: unwhitened, that is node by node)
        return svgp(X, X[::3].clone(), whiten=fused, likelihood=Bernoulli())

    model = build()
    key = (model.q.theta2.shape, DT, model.q.theta2.device)
    opt = NaturalGradient.for_model(model, lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        (-model.elbo(X, y)).backward()
        opt.step()
    assert key in moments._FACTORS
    calls = []
    monkeypatch.setattr(moments, "cholesky", lambda *a: calls.append(a) or (_ for _ in ()).throw(
        AssertionError("factorised again")))
    with torch.no_grad():
        mean, var = model.predict_f(X)
        mean.add_(1.0), var.mul_(0.0)  # (the prediction's tensors are its own)
        model.elbo(X, y)
    assert key in moments._FACTORS
    elbo = model.elbo(X, y)
    assert key not in moments._FACTORS and not calls
    monkeypatch.undo()
    fresh = build()
    fresh.load_state_dict(model.state_dict())
    moments._FACTORS.clear()
    torch.testing.assert_close(elbo, fresh.elbo(X, y), rtol=1e-13, atol=0.0)
    with torch.no_grad():
        torch.testing.assert_close(model.predict_f(X)[0], fresh.predict_f(X)[0], rtol=1e-13,
                                   atol=0.0)
