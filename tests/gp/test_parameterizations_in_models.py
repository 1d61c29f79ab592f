"""Every parameterisation in a model: its natural gradient, pushed through ∂θ/∂ξ, is the natural
gradient in θ, and a small step in ξ agrees with the step in θ to second order."""

from __future__ import annotations

import pytest
import torch

from natvi import natural_gradient
from natvi.likelihoods import Bernoulli
from natvi.parameterizations import BUILTIN, DiagNatural, Natural
from tests.gaussians import DiagMeanLogPrecision, MeanPrecisionCholesky
from tests.gp.problems import DT, data, random_q, svgp

PARAMS = [cls() for cls in BUILTIN] + [MeanPrecisionCholesky(), DiagMeanLogPrecision()]


def _model(p, whiten, likelihood=None):
    X, y = data(N=30)
    if likelihood is not None:
        y = (y > 0).to(DT)
    Z = torch.linspace(-2, 2, 5, dtype=DT).unsqueeze(-1)
    model = svgp(X, Z, whiten=whiten, parameterization=p, q_diag=p.diagonal,
                 likelihood=likelihood)
    random_q(model)
    return model, X, y


def _nat_grad(model, X, y):
    xi = model.q.xi()
    grads = torch.autograd.grad(-model.elbo(X, y), xi)
    return tuple(x.detach() for x in xi), natural_gradient(model.q.parameterization, xi, grads)


@pytest.mark.parametrize("p", PARAMS, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("whiten", [True, False])
@pytest.mark.parametrize("lik", ["gaussian", "bernoulli"])
def test_natural_gradient_in_any_parameterization_is_the_natural_gradient_in_theta(p, whiten, lik):
    likelihood = Bernoulli() if lik == "bernoulli" else None
    model, X, y = _model(p, whiten, likelihood)
    xi, nat_xi = _nat_grad(model, X, y)
    # the same q in natural coordinates
    ref = _model(DiagNatural() if p.diagonal else Natural(), whiten, likelihood)[0]
    ref.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("q.")},
                        strict=False)
    with torch.no_grad():
        ref.q.set_meancov(*model.q.meancov())
    theta, nat_theta = _nat_grad(ref, X, y)

    # 1. the tangent vectors agree: J · nat_xi == nat_theta
    _, pushed = torch.func.jvp(p.to_natural, xi, nat_xi)
    for a, b in zip(pushed, nat_theta):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)

    # 2. a step of size ε in ξ equals the step in θ up to O(ε²)
    def err(eps):
        stepped = p.to_natural(*(x - eps * g for x, g in zip(xi, nat_xi)))
        return max(float((s - (t - eps * g)).abs().max())
                   for s, t, g in zip(stepped, theta, nat_theta))

    scale = max(float(g.abs().max()) for g in nat_theta)
    e1, e2 = err(1e-3 / scale), err(0.5e-3 / scale)
    if e1 > 1e-11:  # maps linear in θ (Natural) have no second-order term at all
        assert 3.0 < e1 / e2 < 5.0, (e1, e2)
