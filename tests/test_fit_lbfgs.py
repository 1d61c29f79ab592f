"""natvi.fit(hyper_optimizer="lbfgs"): the hyperparameters reach the maximum of the collapsed
bound (an independent closed form), input checks, resume, and trial points leave q untouched."""

from __future__ import annotations

import math

import gpytorch
import pytest
import torch

import natvi
from natvi._closures import profiling_closure
from natvi.gp import SVGP
from natvi.likelihoods import Bernoulli, Gaussian
from natvi.optim import NaturalGradient
from natvi.parameterizations import MeanCholesky
from natvi.strategy import Local

DT = torch.float64


def _regression(whiten=True, N=80, M=12, parameterization=None):
    g = torch.Generator().manual_seed(3)
    X = torch.rand(N, 1, generator=g, dtype=DT) * 6
    y = torch.sin(X[:, 0]) + 0.2 * torch.randn(N, generator=g, dtype=DT)
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()).double()
    model = SVGP(kernel=kernel, likelihood=Gaussian(noise=0.3), inducing_points=X[:M].clone(),
                 whiten=whiten, learn_inducing=False, jitter=1e-6,
                 parameterization=parameterization)
    return X, y, model


def _collapsed_bound(kernel, noise, X, Z, y, jitter=1e-6):
    """Titsias (2009): max_q ELBO = log N(y | 0, Q + σ²I) − tr(K − Q) / (2σ²), with
    Q = K_xz (K_zz + jitter I)⁻¹ K_zx; written out densely, independent of natvi.gp."""
    Kzz = kernel(Z).to_dense() + jitter * torch.eye(Z.shape[0], dtype=DT)
    Kzx = kernel(Z, X).to_dense()
    Q = Kzx.T @ torch.linalg.solve(Kzz, Kzx)
    N = X.shape[0]
    C = Q + noise * torch.eye(N, dtype=DT)
    fit = torch.distributions.MultivariateNormal(torch.zeros(N, dtype=DT), C).log_prob(y)
    return fit - (kernel(X, diag=True) - Q.diagonal()).sum() / (2 * noise)


@pytest.mark.parametrize("whiten", [True, False])
def test_hyperparameters_reach_the_maximum_of_the_collapsed_bound(whiten):
    X, y, model = _regression(whiten)
    Z = model.inducing_points.detach()
    # the reference: torch's L-BFGS with a strong-Wolfe search on the collapsed bound itself
    ref_kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()).double()
    ref_kernel.load_state_dict(model.kernel.state_dict())
    raw_noise = model.likelihood.raw_noise.detach().clone().requires_grad_()
    params = [*ref_kernel.parameters(), raw_noise]
    opt = torch.optim.LBFGS(params, max_iter=500, tolerance_grad=1e-12, tolerance_change=0,
                            line_search_fn="strong_wolfe", history_size=20)

    def closure():
        opt.zero_grad()
        loss = -_collapsed_bound(ref_kernel, torch.nn.functional.softplus(raw_noise), X, Z, y)
        loss.backward()
        return loss

    opt.step(closure)
    best = -float(closure())

    result = natvi.fit(model, X, y, iterations=60, lr=1.0, hyper_optimizer="lbfgs",
                       progress=False)
    with torch.no_grad():
        elbo = float(model.elbo(X, y))
        bound = float(_collapsed_bound(model.kernel, model.likelihood.noise, X, Z, y))
    assert elbo == pytest.approx(bound, abs=1e-8)  # q is at its optimum for these θ
    assert elbo == pytest.approx(best, abs=1e-6)  # and θ at the bound's maximum
    assert all(b >= a - 1e-9 for a, b in zip(result.history.elbo, result.history.elbo[1:]))
    torch.testing.assert_close(model.likelihood.noise.detach(),
                               torch.nn.functional.softplus(raw_noise).detach(), rtol=1e-4, atol=0)
    torch.testing.assert_close(model.kernel.base_kernel.lengthscale.detach(),
                               ref_kernel.base_kernel.lengthscale.detach(), rtol=1e-4, atol=0)


def test_lbfgs_needs_full_batch_natural_steps_and_known_names():
    X, y, model = _regression()
    with pytest.raises(ValueError, match="full-batch"):
        natvi.fit(model, X, y, iterations=1, hyper_optimizer="lbfgs", batch_size=10,
                  progress=False)
    _, _, adam_model = _regression(parameterization=MeanCholesky())
    with pytest.raises(ValueError, match="method='natgrad'"):
        natvi.fit(adam_model, X, y, iterations=1, method="adam", hyper_optimizer="lbfgs",
                  progress=False)
    with pytest.raises(ValueError, match="unknown hyper_optimizer 'bfgs'"):
        natvi.fit(model, X, y, iterations=1, hyper_optimizer="bfgs", progress=False)
    with pytest.raises(ValueError, match="hyper_warmup"):
        natvi.fit(model, X, y, iterations=1, hyper_optimizer="lbfgs", hyper_warmup=-1,
                  progress=False)


def _classifier(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(60, 2, generator=g, dtype=DT)
    y = (X[:, 0] * X[:, 1] > 0).to(DT)
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()).double()
    return X, y, SVGP(kernel=kernel, likelihood=Bernoulli(), inducing_points=X[:8].clone())


def test_resume_with_lbfgs_gives_the_uninterrupted_trajectory(tmp_path):
    kw = dict(lr=natvi.optim.LogLinearWarmup(1e-3, 0.5, 3), hyper_optimizer="lbfgs",
              hyper_warmup=3, progress=False)
    X, y, model = _classifier()
    full = natvi.fit(model, X, y, iterations=16, **kw).history.elbo
    X, y, model = _classifier()
    path = tmp_path / "run.pt"
    natvi.fit(model, X, y, iterations=9, checkpoint=path, checkpoint_every=3, **kw)
    X, y, model = _classifier()
    resumed = natvi.fit(model, X, y, iterations=16, checkpoint=path, resume=True, **kw)
    assert resumed.history.elbo == full
    assert math.isfinite(full[-1]) and full[-1] > full[3]


def test_every_trial_point_starts_from_the_same_q():
    X, y, model = _classifier()
    q_opt = NaturalGradient.for_model(model, lr=0.5)
    params = [p for p in model.parameters() if p.requires_grad]
    closure = profiling_closure(Local(), model, X, y, None, params, q_opt, loss_check=False)
    first = float(closure())
    q_after = [p.detach().clone() for p in model.variational_parameters()]
    with torch.no_grad():
        model.kernel.base_kernel.raw_lengthscale.add_(0.3)  # another trial point ...
    closure()
    with torch.no_grad():
        model.kernel.base_kernel.raw_lengthscale.sub_(0.3)  # ... and back
    assert float(closure()) == first  # q was reset before each natural step
    assert all(torch.equal(a, b) for a, b in zip(q_after, model.variational_parameters()))
