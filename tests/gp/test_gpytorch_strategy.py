"""``NatviVariationalStrategy`` / ``NatviUnwhitenedVariationalStrategy`` against GPyTorch's own
``VariationalStrategy`` / ``UnwhitenedVariationalStrategy`` (the independent references): the
same ELBO, gradients, KL and predictions in every parameterisation, the same natural-gradient
trajectory for a multi-latent (softmax) model as GPyTorch's ``NGD``, GPyTorch's multi-output
wrappers, the fall-backs (eval mode, M ≥ N, x = Z) and errors."""

from __future__ import annotations

import gpytorch
import pytest
import torch
from gpytorch.variational import (
    IndependentMultitaskVariationalStrategy,
    LMCVariationalStrategy,
    NaturalVariationalDistribution,
    UnwhitenedVariationalStrategy,
    VariationalStrategy,
)

from natvi.gp.gpytorch import (
    NatviUnwhitenedVariationalStrategy,
    NatviVariationalDistribution,
    NatviVariationalStrategy,
)
from natvi.optim import NaturalGradient
from natvi.parameterizations import BUILTIN, Natural

DT = torch.float64
CLASSES = 3
PAIRS = [(VariationalStrategy, NatviVariationalStrategy),
         (UnwhitenedVariationalStrategy, NatviUnwhitenedVariationalStrategy)]
pairs = pytest.mark.parametrize("pair", PAIRS, ids=["whitened", "unwhitened"])


class GPModel(gpytorch.models.ApproximateGP):
    """Learned Z, constant mean, scaled RBF; ``num_latent > 1`` wraps the strategy in
    GPyTorch's ``IndependentMultitaskVariationalStrategy`` (one latent per class)."""

    def __init__(self, Z, q_u, strategy, num_latent=1):
        s = strategy(self, Z, q_u, learn_inducing_locations=True)
        batch = torch.Size([num_latent] if num_latent > 1 else [])
        if num_latent > 1:
            s = IndependentMultitaskVariationalStrategy(s, num_tasks=num_latent)
        super().__init__(s)
        self.mean_module = gpytorch.means.ConstantMean(batch_shape=batch)
        self.covar_module = gpytorch.kernels.ScaleKernel(
            gpytorch.kernels.RBFKernel(batch_shape=batch), batch_shape=batch)

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def _data(N=60, classes=2, dtype=DT):
    g = torch.Generator().manual_seed(0)
    X = (torch.rand(N, 2, generator=g, dtype=DT) * 4 - 2).to(dtype)
    f = torch.sin(2 * X[:, 0]) + X[:, 1]
    if classes == 2:
        return X, (f > 0).to(dtype)
    return X, torch.bucketize(f, torch.tensor([-0.5, 0.5], dtype=dtype))


def _pair(p, M=8, num_latent=1, dtype=DT, pair=PAIRS[0]):
    """The same random q, kernel, mean and Z under GPyTorch's strategy and natvi's."""
    X, _ = _data(dtype=dtype)
    batch = (num_latent,) if num_latent > 1 else ()
    models = []
    for strategy in pair:
        q_u = NatviVariationalDistribution(M, batch_shape=batch, parameterization=p, dtype=dtype)
        model = GPModel(X[:M].clone(), q_u, strategy, num_latent).to(dtype)
        g = torch.Generator().manual_seed(1)
        m = torch.randn(*batch, M, generator=g, dtype=DT)
        if p.diagonal:
            S = 0.2 + torch.rand(*batch, M, generator=g, dtype=DT)
        else:
            B = torch.randn(*batch, M, M, generator=g, dtype=DT) / M**0.5
            S = B @ B.mT + 0.3 * torch.eye(M, dtype=DT)
        q_u.q.set_meancov(m.to(dtype), S.to(dtype))
        with torch.no_grad():
            model.covar_module.base_kernel.lengthscale = 0.8
            model.covar_module.outputscale = 1.3
            model.mean_module.constant.fill_(0.2)
        _base(model).variational_params_initialized.fill_(1)
        models.append(model)
    return models


def _base(model):
    s = model.variational_strategy
    return getattr(s, "base_variational_strategy", s)


def _loss_and_grads(model, likelihood, X, y):
    model.train()
    mll = gpytorch.mlls.VariationalELBO(likelihood, model, num_data=len(y))
    loss = -mll(model(X), y)
    params = [*model.parameters()]
    return loss.detach(), torch.autograd.grad(loss, params)


@pairs
@pytest.mark.parametrize("cls", BUILTIN, ids=lambda c: c.__name__)
def test_elbo_and_its_gradients_equal_gpytorchs_strategy_in_every_parameterization(cls, pair):
    X, y = _data()
    theirs, ours = _pair(cls(), pair=pair)
    lik = gpytorch.likelihoods.BernoulliLikelihood().to(DT)
    (l_ref, g_ref), (l_ours, g_ours) = (_loss_and_grads(m, lik, X, y) for m in (theirs, ours))
    torch.testing.assert_close(l_ours, l_ref, rtol=1e-12, atol=0)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for a, b in zip(g_ours, g_ref):  # ξ, Z, mean and kernel hyperparameters
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pairs
def test_kl_divergence_equals_gpytorchs_for_every_latent(pair):
    """After a training forward pass, as the ELBO reads it (unwhitened GPyTorch's prior before
    any forward pass has a larger default jitter; natvi's uses ``jitter_val`` throughout)."""
    X, _ = _data()
    theirs, ours = _pair(Natural(), num_latent=CLASSES, pair=pair)
    for m in (theirs, ours):
        m.train()
        m(X)
    kl_ref, kl_ours = (_base(m).kl_divergence() for m in (theirs, ours))
    assert kl_ours.shape == (CLASSES,)
    torch.testing.assert_close(kl_ours, kl_ref, rtol=1e-12, atol=0)


def test_softmax_multi_latent_follows_gpytorch_ngd_trajectory():
    """Three latents under ``IndependentMultitaskVariationalStrategy``, Monte Carlo softmax with
    the same draws (same seed), Adam on Z and the hyperparameters: natvi's strategy + q +
    ``NaturalGradient`` track ``NaturalVariationalDistribution`` + ``NGD`` step for step."""
    X, y = _data(classes=CLASSES)
    N, M = len(y), 8
    runs = []
    for natvi in (False, True):
        torch.manual_seed(0)
        if natvi:
            q_u = NatviVariationalDistribution(M, batch_shape=(CLASSES,), dtype=DT)
            model = GPModel(X[:M].clone(), q_u, NatviVariationalStrategy, CLASSES).to(DT)
            ngd = NaturalGradient(model.variational_parameters(), num_data=N, lr=0.1)
        else:
            q_u = NaturalVariationalDistribution(M, batch_shape=torch.Size([CLASSES]))
            model = GPModel(X[:M].clone(), q_u, VariationalStrategy, CLASSES).to(DT)
            ngd = gpytorch.optim.NGD(model.variational_parameters(), num_data=N, lr=0.1)
        with torch.no_grad():  # q at the prior, no mean jitter: the same start for both
            model.covar_module.base_kernel.lengthscale = 0.8
            prior = _base(model).prior_distribution
            if natvi:
                q_u.q.set_meancov(prior.mean, prior.covariance_matrix)
            else:
                q_u.natural_vec.zero_()
                q_u.natural_mat.copy_(-0.5 * torch.eye(M, dtype=DT).expand(CLASSES, M, M))
        _base(model).variational_params_initialized.fill_(1)
        lik = gpytorch.likelihoods.SoftmaxLikelihood(num_classes=CLASSES,
                                                     mixing_weights=False).to(DT)
        mll = gpytorch.mlls.VariationalELBO(lik, model, num_data=N)
        adam = torch.optim.Adam(model.hyperparameters(), lr=0.01)
        losses = []
        for i in range(8):
            torch.manual_seed(100 + i)
            ngd.zero_grad()
            adam.zero_grad()
            with gpytorch.settings.num_likelihood_samples(16):
                loss = -mll(model(X), y)
            loss.backward()
            ngd.step()
            adam.step()
            losses.append(loss.detach())
        q = _base(model).variational_distribution
        runs.append((torch.stack(losses), q.mean.detach(), q.covariance_matrix.detach()))
    assert float(runs[0][0][-1]) < float(runs[0][0][0]) - 0.05  # it learns
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pairs
def test_eval_mode_predictions_are_gpytorchs(pair):
    Xs = torch.linspace(-2, 2, 7, dtype=DT).unsqueeze(-1).expand(7, 2)
    theirs, ours = _pair(Natural(), pair=pair)
    for m in (theirs, ours):
        m.eval()
    with torch.no_grad():
        ref, out = theirs(Xs), ours(Xs)
    torch.testing.assert_close(out.mean, ref.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.covariance_matrix, ref.covariance_matrix, rtol=1e-10,
                               atol=1e-12)


@pairs
def test_fewer_points_than_inducing_points_give_gpytorchs_elbo(pair):
    X, y = _data()
    theirs, ours = _pair(Natural(), pair=pair)
    lik = gpytorch.likelihoods.BernoulliLikelihood().to(DT)
    (l_ref, g_ref), (l_ours, g_ours) = (_loss_and_grads(m, lik, X[:5], y[:5])
                                        for m in (theirs, ours))
    torch.testing.assert_close(l_ours, l_ref, rtol=1e-12, atol=0)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pairs
def test_float32_model_matches_gpytorchs_strategy_in_float32(pair):
    X, y = _data(dtype=torch.float32)
    theirs, ours = _pair(Natural(), dtype=torch.float32, pair=pair)
    lik = gpytorch.likelihoods.BernoulliLikelihood()
    (l_ref, _), (l_ours, g_ours) = (_loss_and_grads(m, lik, X, y) for m in (theirs, ours))
    assert l_ours.dtype == torch.float32 and all(g.dtype == torch.float32 for g in g_ours)
    torch.testing.assert_close(l_ours, l_ref, rtol=1e-5, atol=0)


@pairs
def test_a_gpytorch_distribution_is_refused_with_what_to_use_instead(pair):
    X, _ = _data()
    stock, natvi = pair
    with pytest.raises(TypeError, match=f"NatviVariationalDistribution.*variational.{stock.__name__} "):
        GPModel(X[:8].clone(), NaturalVariationalDistribution(8), natvi)


def test_full_training_covariance_and_its_gradients_are_gpytorchs():
    """``diag=False`` (as ``IndependentMultitaskVariationalStrategy`` asks): the whole predictive
    covariance, off-diagonal entries included, and the gradients of a loss that reads them."""
    X, _ = _data()
    theirs, ours = _pair(Natural())
    out = []
    for model in (theirs, ours):
        model.train()
        f = model.variational_strategy(X, diag=False)
        cov = f.lazy_covariance_matrix
        loss = cov.to_dense().square().sum() + f.variance.sum() + f.mean.sum()
        out.append((cov.to_dense().detach(), f.variance.detach(),
                    torch.autograd.grad(loss, [*model.parameters()])))
    (c_ref, v_ref, g_ref), (c_ours, v_ours, g_ours) = out
    torch.testing.assert_close(c_ours, c_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(v_ours, v_ref, rtol=1e-12, atol=1e-14)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("wrapper", ["lmc", "task_indices"])
def test_gpytorchs_multi_output_wrappers_see_gpytorchs_distribution(wrapper):
    """Under ``LMCVariationalStrategy`` (3 tasks mixed from 2 latents) and under
    ``IndependentMultitaskVariationalStrategy`` with ``task_indices`` (one task per point, which
    masks the full covariance): the same mean, covariance and gradients as GPyTorch's strategy."""
    X, _ = _data()
    M, latents = 8, 2
    task_indices = torch.randint(0, latents, (len(X),), generator=torch.Generator().manual_seed(3))
    out = []
    for strategy in (VariationalStrategy, NatviVariationalStrategy):
        q_u = NatviVariationalDistribution(M, batch_shape=(latents,), dtype=DT)
        model = GPModel(X[:M].clone(), q_u, strategy, latents).to(DT)
        base = _base(model)
        if wrapper == "lmc":
            torch.manual_seed(2)  # the same random mixing coefficients for both
            model.variational_strategy = LMCVariationalStrategy(base, num_tasks=3,
                                                                num_latents=latents,
                                                                latent_dim=-1).to(DT)
            kwargs = {}
        else:
            kwargs = {"task_indices": task_indices}
        g = torch.Generator().manual_seed(1)
        B = torch.randn(latents, M, M, generator=g, dtype=DT) / 3
        q_u.q.set_meancov(torch.randn(latents, M, generator=g, dtype=DT),
                          B @ B.mT + 0.3 * torch.eye(M, dtype=DT))
        base.variational_params_initialized.fill_(1)
        model.train()
        torch.manual_seed(0)
        f = model(X, **kwargs)
        cov = f.lazy_covariance_matrix.to_dense()
        loss = f.mean.sum() + f.variance.sum() + cov.square().sum()
        out.append((f.mean.detach(), f.variance.detach(), cov.detach(),
                    torch.autograd.grad(loss, [*model.parameters()])))
    (*ref, g_ref), (*ours, g_ours) = out
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_unwhitened_training_at_the_inducing_inputs_and_kl_after_forward_are_gpytorchs():
    """``x = Z`` in training returns q(u) itself (GPyTorch's special case); the KL read after a
    training forward pass (the ELBO's order) uses that pass's factor of K_zz."""
    X, y = _data()
    theirs, ours = _pair(Natural(), pair=PAIRS[1])
    out = []
    for model in (theirs, ours):
        model.train()
        f_z = model(model.variational_strategy.inducing_points)
        model(X)
        out.append((f_z.mean.detach(), f_z.covariance_matrix.detach(),
                    model.variational_strategy.kl_divergence().detach()))
    for a, b in zip(*out):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_unwhitened_kl_before_any_forward_pass_is_the_dense_kl_to_the_jittered_prior():
    _, ours = _pair(Natural(), num_latent=CLASSES, pair=PAIRS[1])
    base = _base(ours)
    m, S, _ = base.moments()
    prior = ours.forward(base.inducing_points)
    K = prior.covariance_matrix + base.jitter_val * torch.eye(m.shape[-1], dtype=DT)
    ref = torch.distributions.kl_divergence(torch.distributions.MultivariateNormal(m, S),
                                            torch.distributions.MultivariateNormal(prior.mean, K))
    torch.testing.assert_close(base.kl_divergence(), ref, rtol=1e-12, atol=0)


@pairs
def test_softmax_elbo_and_gradients_under_the_multitask_wrapper_equal_gpytorchs(pair):
    """Three latents under ``IndependentMultitaskVariationalStrategy`` (which asks for
    ``diag=False``), Monte Carlo softmax with the same draws: the same ELBO and gradients."""
    X, y = _data(classes=CLASSES)
    theirs, ours = _pair(Natural(), num_latent=CLASSES, pair=pair)
    lik = gpytorch.likelihoods.SoftmaxLikelihood(num_classes=CLASSES, mixing_weights=False).to(DT)
    out = []
    for model in (theirs, ours):
        torch.manual_seed(5)
        with gpytorch.settings.num_likelihood_samples(16):
            out.append(_loss_and_grads(model, lik, X, y))
    (l_ref, g_ref), (l_ours, g_ours) = out
    torch.testing.assert_close(l_ours, l_ref, rtol=1e-12, atol=0)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_unwhitened_full_training_covariance_is_the_exact_one_with_gpytorchs_variances():
    """Unwhitened, ``diag=False`` in training: natvi returns the exact covariance (GPyTorch's
    eval-mode one); GPyTorch's training form keeps only the diagonal of ``K_xx − Q_xx``, so the
    variances agree and the off-diagonal entries are the exact ones."""
    X, _ = _data()
    theirs, ours = _pair(Natural(), pair=PAIRS[1])
    ours.train()
    f = ours.variational_strategy(X, diag=False)
    theirs.train()
    v_ref = theirs.variational_strategy(X, diag=False).variance
    theirs.eval()
    with torch.no_grad():
        c_exact = theirs.variational_strategy(X, diag=False).covariance_matrix
    torch.testing.assert_close(f.variance, v_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(f.lazy_covariance_matrix.to_dense().detach(), c_exact,
                               rtol=1e-10, atol=1e-12)


@pairs
def test_a_multi_output_wrappers_kl_is_the_strategys_closed_form(pair, monkeypatch):
    """``IndependentMultitaskVariationalStrategy.kl_divergence`` asks torch for
    ``KL(variational_distribution ‖ prior_distribution)``: natvi's q answers it with its
    strategy's closed form (GPyTorch's generic KL, which factors S, is not called) and gives
    GPyTorch's value; a KL to any other distribution is still GPyTorch's."""
    import natvi.gp.gpytorch as interop

    X, _ = _data(classes=CLASSES)
    theirs, ours = _pair(Natural(), num_latent=CLASSES, pair=pair)
    for m in (theirs, ours):
        m.train()
        m(X)
    want = theirs.variational_strategy.kl_divergence()

    def refuse(q, p):
        raise AssertionError("GPyTorch's generic KL was called")

    monkeypatch.setattr(interop, "kl_mvn_mvn", refuse)
    got = ours.variational_strategy.kl_divergence()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    monkeypatch.undo()
    q = _base(ours).variational_distribution
    other = gpytorch.distributions.MultivariateNormal(torch.zeros_like(q.mean),
                                                      2.0 * torch.eye(8, dtype=DT))
    torch.testing.assert_close(torch.distributions.kl_divergence(q, other),
                               gpytorch.distributions.multivariate_normal.kl_mvn_mvn(q, other))


@pairs
@pytest.mark.parametrize("kernel", ["matern", "periodic", "eager"])
def test_closed_form_and_gpytorch_evaluated_kernel_blocks_give_gpytorchs_elbo(kernel, pair):
    """A closed-form kernel (Matérn) is evaluated by natvi, a periodic one — or any kernel when
    GPyTorch evaluates kernels eagerly — by GPyTorch; the ELBO and every gradient match."""
    import copy

    from natvi.gp import gpytorch as interop

    X, y = _data()
    theirs, ours = _pair(Natural(), pair=pair)
    if kernel != "eager":
        base = (gpytorch.kernels.MaternKernel(nu=1.5) if kernel == "matern"
                else gpytorch.kernels.PeriodicKernel())
        k = gpytorch.kernels.ScaleKernel(base).to(DT)
        theirs.covar_module, ours.covar_module = k, copy.deepcopy(k)
    used = []
    real = interop._closed_form_blocks

    def spy(covar, M):
        out = real(covar, M)
        used.append(out[0] is not None)
        return out

    lik = gpytorch.likelihoods.BernoulliLikelihood().to(DT)
    with gpytorch.settings.lazily_evaluate_kernels(kernel != "eager"):
        ref = _loss_and_grads(theirs, lik, X, y)
        interop._closed_form_blocks = spy
        try:
            got = _loss_and_grads(ours, lik, X, y)
        finally:
            interop._closed_form_blocks = real
    assert used == [kernel == "matern"]
    torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=0)
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
