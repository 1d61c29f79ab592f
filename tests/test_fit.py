"""natvi.fit: conjugate exactness through the loop, alternation, minibatches, history,
checkpoint/resume, input validation; acceptance tests on natvi.gp models."""

from __future__ import annotations

import pytest
import torch

import natvi
from natvi.optim import LogLinearWarmup
from natvi.parameterizations import MeanCholesky, Natural
from tests.optim.toy_models import BayesLinReg, LogisticReg, classification_data, regression_data


def _fixed(model):
    for p in model.hyperparameters():
        p.requires_grad_(False)
    return model


def test_one_iteration_of_lr_one_reaches_the_exact_posterior():
    X, y = regression_data(L=2)
    model = _fixed(BayesLinReg(3, Natural(), num_outputs=2))
    result = natvi.fit(model, X, y, iterations=1, progress=False)
    m, S = model.q.meancov()
    m_exact, S_exact = model.exact_posterior(X, y)
    torch.testing.assert_close(m, m_exact, rtol=0, atol=1e-10)
    torch.testing.assert_close(S, S_exact, rtol=0, atol=1e-12)
    assert result.hyper_optimizer is None and len(result.history) == 1


def test_history_records_elbo_time_lr_events_and_the_callback_metric():
    X, y = classification_data(N=80)
    model = LogisticReg(3, Natural())
    calls = []

    def callback(model, history):
        calls.append(len(history))
        return float(len(history)) * 2

    result = natvi.fit(model, X, y, iterations=6, lr=LogLinearWarmup(1e-2, 1.0, K=3),
                       callback=callback, progress=False)
    h = result.history
    assert h.iteration == list(range(6)) and calls == [1, 2, 3, 4, 5, 6]
    assert h.metric == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
    assert h.lr[:4] == pytest.approx([1e-2, 10 ** (-4 / 3), 10 ** (-2 / 3), 1.0])
    assert all(b >= a for a, b in zip(h.time, h.time[1:])) and h.events == [[]] * 6
    assert h.elbo[-1] > h.elbo[0] and result.elbo == h.elbo[-1]
    assert len(h.rows()) == 6


@pytest.mark.parametrize("recompute", [False, True])
def test_hyperparameter_step_uses_the_gradient_before_or_after_the_natural_step(recompute):
    X, y = regression_data(N=50)
    model = BayesLinReg(3, Natural(), noise=1.0)
    twin = BayesLinReg(3, Natural(), noise=1.0)
    if recompute:  # the gradient at the new q, which is the exact posterior after one step
        twin.q.set_meancov(*(t[0] for t in twin.exact_posterior(X, y)))
    (-twin.elbo(X, y)).backward()
    expected = twin.log_noise.detach() - 0.1 * twin.log_noise.grad
    sgd = lambda params: torch.optim.SGD(params, lr=0.1)
    natvi.fit(model, X, y, iterations=1, hyper_optimizer=sgd, recompute_grad=recompute,
              progress=False)
    torch.testing.assert_close(model.log_noise.detach(), expected, rtol=0, atol=1e-12)


def test_adam_method_runs_ordinary_gradients_on_everything():
    X, y = classification_data(N=80)
    model = LogisticReg(3, MeanCholesky())
    before = [p.detach().clone() for p in model.parameters()]
    result = natvi.fit(model, X, y, method="adam", iterations=20, progress=False)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert isinstance(result.variational_optimizer, torch.optim.Adam)
    assert result.history.lr == [0.01] * 20 and result.history.elbo[-1] > result.history.elbo[0]


def test_minibatch_elbo_is_scaled_by_n_over_b_and_follows_the_seeded_order():
    X, y = classification_data(N=40)
    model = LogisticReg(3, Natural())
    with torch.no_grad():
        idx = torch.randperm(40, generator=torch.Generator().manual_seed(7))[:10]
        expected = float(model.elbo(X[idx], y[idx], num_data=40))
    result = natvi.fit(model, X, y, iterations=3, batch_size=10, seed=7, progress=False)
    assert result.history.elbo[0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("batch_size", [None, 16])
def test_resume_from_a_checkpoint_gives_the_uninterrupted_trajectory(tmp_path, batch_size):
    X, y = classification_data(N=64)
    kw = dict(iterations=8, lr=LogLinearWarmup(1e-2, 1.0, K=4), batch_size=batch_size,
              progress=False)
    full = LogisticReg(3, Natural())
    ref = natvi.fit(full, X, y, **kw)

    path = tmp_path / "ckpt.pt"
    first = LogisticReg(3, Natural())
    natvi.fit(first, X, y, **{**kw, "iterations": 5}, checkpoint=path, checkpoint_every=2)
    fresh = LogisticReg(3, Natural())
    resumed = natvi.fit(fresh, X, y, **kw, checkpoint=path, resume=True)
    for a, b in zip(full.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.history.elbo == ref.history.elbo
    assert resumed.history.iteration == list(range(8))


def test_safeguard_events_reach_the_history():
    X, y = regression_data()
    model = _fixed(BayesLinReg(3, Natural()))
    with pytest.warns(natvi.optim.SafeguardWarning):
        result = natvi.fit(model, X, y, iterations=2, lr=3.0, progress=False)
    assert result.history.events[0] == [] or result.history.events[1][0]["kind"] == "backoff"
    assert any(result.history.events)


def test_stop_when_ends_the_run_early():
    X, y = classification_data(N=50)
    result = natvi.fit(LogisticReg(3), X, y, iterations=50, progress=False,
                       stop_when=lambda h: len(h) == 3)
    assert len(result.history) == 3 and result.stopped_early


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"X": torch.full((5, 3), float("nan"))}, "X contains NaN"),
        ({"y": torch.tensor([0.0, 1.0, float("inf"), 0.0, 1.0])}, "y contains infinite"),
        ({"y": torch.zeros(4)}, "shape mismatch"),
        ({"method": "sgd"}, "unknown method"),
        ({"iterations": -1}, "iterations"),
        ({"batch_size": 10}, "batch_size"),
        ({"resume": True}, "checkpoint"),
        ({"lr": 0.0}, "lr"),
        ({"method": "adam", "model": LogisticReg(3, Natural())}, "MeanCholesky"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    X, y = classification_data(N=5)
    args = {"model": LogisticReg(3, MeanCholesky()), "X": X, "y": y, "progress": False} | kwargs
    with pytest.raises(ValueError, match=match):
        natvi.fit(args.pop("model"), args.pop("X"), args.pop("y"), **args)


# --- acceptance on natvi.gp: SVGP / VGP, two moons -------------------------------------------


def _gp_regression(whiten):
    import gpytorch

    from natvi.gp import SVGP, VGP
    from natvi.likelihoods import Gaussian

    g = torch.Generator().manual_seed(0)
    X = torch.rand(60, 1, generator=g, dtype=torch.float64) * 6
    y = torch.sin(X[:, 0]) + 0.1 * torch.randn(60, generator=g, dtype=torch.float64)
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()).double()
    svgp = SVGP(kernel=kernel, likelihood=Gaussian(noise=0.05), inducing_points=X[::6].clone(),
                whiten=whiten)
    vgp = VGP(X, kernel=kernel, likelihood=Gaussian(noise=0.05), whiten=whiten)
    return X, y, svgp, vgp


@pytest.mark.parametrize("whiten", [True, False])
def test_conjugate_gp_models_reach_their_optimum_in_one_fit_iteration(whiten):
    X, y, svgp, vgp = _gp_regression(whiten)
    for model in (svgp, vgp):
        _fixed(model)
        natvi.fit(model, X, y, iterations=1, progress=False)
        with torch.no_grad():
            m1, S1 = (t.clone() for t in model.q.meancov())
        natvi.fit(model, X, y, iterations=1, progress=False)  # a second step must not move q
        with torch.no_grad():
            m2, S2 = model.q.meancov()
        torch.testing.assert_close(m2, m1, rtol=0, atol=1e-8)
        torch.testing.assert_close(S2, S1, rtol=0, atol=1e-8)
    # VGP: the exact GP posterior (up to the model's jitter on K); its ELBO is the log marginal
    # likelihood. The 1e-8 fixed-point check above is the sharp one.
    K = vgp.kernel(X).to_dense() + 1e-6 * torch.eye(60, dtype=torch.float64)
    lml = torch.distributions.MultivariateNormal(
        torch.zeros(60, dtype=torch.float64), K + 0.05 * torch.eye(60, dtype=torch.float64)
    ).log_prob(y)
    with torch.no_grad():
        assert float(vgp.elbo(X, y)) == pytest.approx(float(lml), abs=1e-4)
        mean, _ = vgp.predict_f(X)
        exact = K @ torch.linalg.solve(K + 0.05 * torch.eye(60, dtype=torch.float64), y)
        torch.testing.assert_close(mean, exact, rtol=0, atol=1e-4)


def _moons(dtype=torch.float64, **kw):
    from models import two_moons

    problem = two_moons.build(num_data=5000, num_inducing=50, dtype=dtype, **kw)  # N = 4000
    return problem.X, problem.y, _fixed(problem.model)


def test_two_moons_natural_steps_beat_adam_in_iterations():
    X, y, model = _moons()
    N = X.shape[0]
    nat = natvi.fit(model, X, y, iterations=21, progress=False).history.elbo
    optimum = max(nat)
    reached = next(i for i, e in enumerate(nat) if optimum - e <= 1e-3 * N)
    assert reached <= 20

    X, y, model = _moons(parameterization=MeanCholesky())
    adam = natvi.fit(model, X, y, method="adam", lr=0.01, iterations=200, progress=False)
    assert optimum - max(adam.history.elbo) > 1e-3 * N


def _monotone_or_recovering(elbos, tol):
    return all(
        b >= a - tol or any(c >= a - tol for c in elbos[i + 2 :])
        for i, (a, b) in enumerate(zip(elbos, elbos[1:]))
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("whiten", [True, False])
def test_two_moons_lr_one_from_the_prior_is_stable_in_every_parameterization(whiten, dtype):
    from natvi.parameterizations import BUILTIN

    for P in BUILTIN:
        X, y, model = _moons(dtype=dtype, whiten=whiten, parameterization=P(), q_diag=P().diagonal)
        result = natvi.fit(model, X, y, iterations=3, lr=1.0, progress=False)
        elbos = result.history.elbo
        assert all(torch.isfinite(torch.tensor(elbos))), (P, elbos)
        assert all(bool(torch.isfinite(x).all()) for x in model.q.xi())
        assert elbos[-1] > elbos[0] and _monotone_or_recovering(elbos, 1e-4 * abs(elbos[0]))
