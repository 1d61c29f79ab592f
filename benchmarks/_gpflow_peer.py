"""GPflow's side of ``python -m benchmarks step_cost``: run in GPflow's own virtual environment.

Not imported by natvi or by the benchmark process (it needs TensorFlow and GPflow, which are never
natvi dependencies); :mod:`benchmarks.step_cost` runs it as a subprocess with that
environment's Python::

    <gpflow-python> benchmarks/_gpflow_peer.py problem.npz '{"M": 50, "whiten": true, ...}'

``problem.npz`` holds ``X [N, D]``, ``Y [N]`` (0/1 or class indices), ``Z [M, D]`` and the fixed
kernel hyperparameters ``lengthscale [D]``, ``variance``. One SVGP (squared-exponential kernel,
Bernoulli probit with 20-point Gauss–Hermite, or Softmax with 100 Monte Carlo points), fixed
hyperparameters and inducing inputs, whitened or not; the step is GPflow's ``NaturalGradient``
(``gamma``) on ``(q_mu, q_sqrt)`` compiled with ``tf.function``, on one TensorFlow thread.
Prints one JSON object: the per-step seconds after warm-up, and the ELBO before the first step.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def main(argv: list[str]) -> int:
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import gpflow

    data = np.load(argv[0])
    cfg = json.loads(argv[1])
    dtype = {"float64": np.float64, "float32": np.float32}[cfg["dtype"]]
    gpflow.config.set_default_float(dtype)
    X, Z = data["X"].astype(dtype), data["Z"].astype(dtype)
    kernel = gpflow.kernels.SquaredExponential(
        variance=float(data["variance"]), lengthscales=data["lengthscale"].astype(dtype)
    )
    if cfg["likelihood"] == "bernoulli":
        likelihood, num_latent = gpflow.likelihoods.Bernoulli(), 1
        Y = data["Y"].astype(dtype).reshape(-1, 1)
    else:
        num_latent = int(cfg["classes"])
        likelihood = gpflow.likelihoods.Softmax(num_latent)
        likelihood.num_monte_carlo_points = int(cfg.get("mc_points", 100))
        Y = data["Y"].astype(np.int64).reshape(-1, 1)
    model = gpflow.models.SVGP(
        kernel, likelihood, gpflow.inducing_variables.InducingPoints(Z),
        num_latent_gps=num_latent, whiten=bool(cfg["whiten"]), num_data=X.shape[0],
    )
    gpflow.set_trainable(model.kernel, False)
    gpflow.set_trainable(model.inducing_variable, False)
    gpflow.set_trainable(model.q_mu, False)
    gpflow.set_trainable(model.q_sqrt, False)
    loss = model.training_loss_closure((X, Y), compile=False)
    natgrad = gpflow.optimizers.NaturalGradient(gamma=float(cfg["gamma"]))

    @tf.function
    def step():
        natgrad.minimize(loss, var_list=[(model.q_mu, model.q_sqrt)])

    elbo0 = float(-loss())
    for _ in range(int(cfg["warmup"])):
        step()
    times = []
    for _ in range(int(cfg["repeats"])):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    finite = bool(np.isfinite(model.q_mu.numpy()).all() and np.isfinite(model.q_sqrt.numpy()).all())
    print(json.dumps({"times": times, "elbo0": elbo0, "finite": finite,
                      "gpflow": gpflow.__version__, "tensorflow": tf.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
