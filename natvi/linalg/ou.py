"""``OU``: the thermodynamic solver — an Ornstein–Uhlenbeck process whose mean solves ``A x = b``.

The process ``dx = −(A x − b) dt + sqrt(2 κ0) dW`` (time in device units τ) has stationary law
``N(A⁻¹ b, κ0 A⁻¹)`` and relaxes as ``E x_t = A⁻¹ b + e^{−A t}(x0 − A⁻¹ b)``. Solve = time
average after burn-in; inverse = stationary covariance / κ0; sampling a Gaussian in natural
parameters is the process itself with ``A = −2 θ2, b = θ1, κ0 = 1``.

Two simulators:

- ``"euler"`` — Euler–Maruyama ``x ← x − dt (A x − b) + sqrt(2 κ0 dt) ε``: only products
  ``A v`` (matrix-free), stable for ``dt < 2 / λ_max``; a ``dt`` beyond that raises.
- ``"exact"`` — exact transitions in A's eigenbasis ``A = Q Λ Qᵀ``; per coordinate with
  ``a = e^{−λ dt}``, ``w = qᵀx − qᵀb/λ``: ``w_{j+1} = a w_j + s ε_j``,
  ``s² = κ0 (1 − a²)/λ``. Nothing loops over time: the burn-in is one exact ``B``-step
  transition; the time average and the final state are weighted sums of the step noises,
  ``w̄ = w_B G + Σ_i s (1 − a^{N−i+1}) / ((1 − a) N) ε_i`` and ``w_N = a^N w_B + Σ_i s a^{N−i} ε_i``;
  whole trajectories (for ``inverse``/``sample``) by a log-depth scan ``y_j = a y_{j−1} + e_j``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from natvi._linalg import cholesky, symmetrize
from natvi._validation import check_finite, check_vector_matrix
from natvi.linalg.base import DenseOperator, LinearOperator, LowRankPlusDiag, Solver, prepare
from natvi.linalg.device_model import DeviceModel

__all__ = ["OU", "max_eigenvalue"]

_CHUNK_ELEMENTS = 1 << 22  # noise numbers drawn at once (bounds memory for long runs)


class OU(Solver):
    """Thermodynamic (Ornstein–Uhlenbeck) linear solver, sampler and inverter.

    Args:
        dt: time step in device units τ (> 0).
        num_samples: ``N`` steps that are averaged (after burn-in).
        burnin: ``B`` steps discarded first. Analog time ``t = dt (B + N)``.
        noise: ``κ0 ≥ 0``; 0 gives deterministic relaxation (no noise draws).
        method: ``"euler"`` (matrix-free) or ``"exact"`` (eigendecomposition; reference).
        seed: seeds a ``torch.Generator`` per device (reproducible sequence of calls);
            ``None`` uses torch's global generator.
        tau, bits, bandwidth: the device-time model (:class:`~natvi.linalg.DeviceModel`).
        power_iterations: for the Euler stability check on operators without a known ``λ_max``.

    ``solve(A, b, x0=None)`` returns ``.x`` (time average), ``.final`` (last state),
    ``.analog_time``, ``.device_seconds``, ``.digital_seconds``, ``.iterations`` (= B + N) and
    ``.residual``. Each column of ``b`` is its own independent trajectory.

    Example:
        >>> A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
        >>> res = OU(dt=0.1, num_samples=10_000, burnin=100, method="exact", seed=0).solve(
        ...     A, torch.ones(2, dtype=torch.float64))
        >>> res.x, res.analog_time, res.device_seconds
    """

    def __init__(
        self,
        dt: float = 0.1,
        num_samples: int = 1000,
        burnin: int = 0,
        noise: float = 1.0,
        method: str = "euler",
        seed: int | None = None,
        *,
        tau: float = 1e-6,
        bits: int = 16,
        bandwidth: float = 50e9,
        power_iterations: int = 50,
    ) -> None:
        if not (isinstance(dt, int | float) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a positive time step (in units of τ), got {dt!r}.")
        if not (isinstance(num_samples, int) and num_samples >= 1):
            raise ValueError(f"num_samples must be an int ≥ 1, got {num_samples!r}.")
        if not (isinstance(burnin, int) and burnin >= 0):
            raise ValueError(f"burnin must be an int ≥ 0 (steps), got {burnin!r}.")
        if not (isinstance(noise, int | float) and math.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise (κ0) must be ≥ 0 (0: deterministic), got {noise!r}.")
        if method not in ("euler", "exact"):
            raise ValueError(f"method must be 'euler' or 'exact', got {method!r}.")
        self.dt = float(dt)
        self.num_samples = num_samples
        self.burnin = burnin
        self.noise = float(noise)
        self.method = method
        self.seed = seed
        self.device_model = DeviceModel(tau=tau, bits=bits, bandwidth=bandwidth)
        self.power_iterations = power_iterations
        self._generators: dict[torch.device, torch.Generator] = {}

    def replace(self, **changes: object) -> OU:
        """A new solver with the same settings except ``changes`` (like
        :func:`dataclasses.replace`); its random generators start afresh from ``seed``.

        Example:
            >>> OU(dt=0.1, num_samples=100, power_iterations=20).replace(num_samples=5)
        """
        settings = {
            "dt": self.dt, "num_samples": self.num_samples, "burnin": self.burnin,
            "noise": self.noise, "method": self.method, "seed": self.seed,
            "tau": self.device_model.tau, "bits": self.device_model.bits,
            "bandwidth": self.device_model.bandwidth, "power_iterations": self.power_iterations,
        }
        unknown = sorted(set(changes) - settings.keys())
        if unknown:
            raise ValueError(f"OU has no setting {unknown[0]!r}; settings: {', '.join(settings)}.")
        return type(self)(**{**settings, **changes})

    @property
    def analog_time(self) -> float:
        """``t = dt (burnin + num_samples)`` in units of τ."""
        return self.dt * (self.burnin + self.num_samples)

    # ---------------------------------------------------------------- randomness
    def _randn(self, shape: tuple, like: Tensor) -> Tensor:
        gen = None
        if self.seed is not None:
            gen = self._generators.get(like.device)
            if gen is None:
                gen = torch.Generator(device=like.device).manual_seed(self.seed)
                self._generators[like.device] = gen
        return torch.randn(shape, generator=gen, dtype=like.dtype, device=like.device)

    def _chunks(self, total: int, per_step: int):
        size = max(1, _CHUNK_ELEMENTS // max(per_step, 1))
        for start in range(0, total, size):
            yield start, min(size, total - start)

    # ---------------------------------------------------------------- protocol
    def _solve(self, op: LinearOperator, B: Tensor, X0: Tensor | None) -> tuple[Tensor, dict]:
        X0 = torch.zeros_like(B) if X0 is None else X0
        if self.method == "exact":
            X, final = self._exact_average(op, B, X0, self.noise)
        else:
            X, final = self._euler(op, B, X0, self.noise, keep_trajectory=False)
        entries_in = op.num_entries + B[..., 0, :].numel() * op.size * 2
        runs = B[..., 0, :].numel()
        return X, {
            "iterations": self.burnin + self.num_samples,
            "final": final,
            "analog_time": self.analog_time,
            "device_seconds": self.device_model.seconds(
                self.analog_time, entries_in, 2 * runs * op.size, runs=runs
            ),
        }

    def inverse(self, A: Tensor | LinearOperator) -> Tensor:
        """``A⁻¹ ≈ (1/(κ0 N)) Σ_j x_j x_jᵀ`` over the trajectory with ``b = 0`` (mean known 0).

        Needs ``noise > 0``; start-up bias decays as ``e^{−2 λ_min t_burnin}``, so give a burn-in
        of a few relaxation times ``1/λ_min``. Returns ``[..., n, n]``.
        """
        if self.noise <= 0:
            raise ValueError("inverse needs noise > 0 (the covariance is κ0 A⁻¹); set noise=1.0.")
        op = _operator(A)
        like = self._like(op)
        B = torch.zeros(*op.batch_shape, op.size, 1, dtype=like.dtype, device=like.device)
        traj = self._trajectory(op, B, torch.zeros_like(B), self.noise).squeeze(-1)
        return symmetrize(torch.einsum("t...i,t...j->...ij", traj, traj)) / (
            self.noise * self.num_samples
        )

    def sample(self, theta1: Tensor, theta2: Tensor, n: int | None = None) -> Tensor:
        """``n`` states ``[n, ..., M]`` of the OU trajectory whose stationary law is
        ``q = N(m, S)`` with ``S = (−2 θ2)⁻¹``, ``m = S θ1`` (``A = −2θ2``, ``b = θ1``, κ0 = 1).

        States are taken every ``dt`` after ``burnin`` steps from ``x0 = 0`` (consecutive states
        are correlated; a larger ``dt`` decorrelates them). No Cholesky factor is formed.
        """
        check_finite("theta1", theta1)
        check_finite("theta2", theta2)
        check_vector_matrix("theta1", theta1, "theta2", theta2)
        n = self.num_samples if n is None else n
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"n must be an int ≥ 1 (number of samples), got {n!r}.")
        sampler = self.replace(num_samples=n, noise=1.0)
        sampler._generators = self._generators
        A = -2.0 * theta2
        op, B, _, _ = prepare(A, theta1, None)
        return sampler._trajectory(op, B, torch.zeros_like(B), 1.0).squeeze(-1)

    def _like(self, op: LinearOperator) -> Tensor:
        dtype = op.dtype or torch.get_default_dtype()
        return torch.empty(0, dtype=dtype, device=op.device)

    # ---------------------------------------------------------------- exact transitions
    def _eigen(self, op: LinearOperator, B: Tensor):
        lam, Q = torch.linalg.eigh(symmetrize(op.to_dense(dtype=B.dtype, device=B.device)))
        if bool((lam <= 0).any()):
            raise ValueError(
                "A is not positive definite (smallest eigenvalue "
                f"{float(lam.min()):.3g}); the OU process has no stationary law. Add damping."
            )
        return lam, Q

    def _exact_start(self, lam, Q, B, X0, noise):
        """Eigen-coordinates: ``x* = Q μ``, the state after burn-in ``w_B``, ``a``, ``s``."""
        mu = (Q.mT @ B) / lam.unsqueeze(-1)
        h = (lam * self.dt).unsqueeze(-1)
        s = torch.sqrt(noise * -torch.expm1(-2 * h) / lam.unsqueeze(-1))
        w = Q.mT @ X0 - mu
        if self.burnin:
            w = w * torch.exp(-h * self.burnin)
            if noise > 0:
                var_b = -torch.expm1(-2 * h * self.burnin) / -torch.expm1(-2 * h)
                w = w + s * torch.sqrt(var_b) * self._randn(tuple(w.shape), w)
        return mu, h, s, w

    def _exact_average(self, op, B, X0, noise) -> tuple[Tensor, Tensor]:
        lam, Q = self._eigen(op, B)
        mu, h, s, w = self._exact_start(lam, Q, B, X0, noise)
        N = self.num_samples
        one_minus_a = -torch.expm1(-h)
        avg = w * torch.exp(-h) * -torch.expm1(-h * N) / (one_minus_a * N)
        final = w * torch.exp(-h * N)
        if noise > 0:
            for start, size in self._chunks(N, w.numel()):
                i = torch.arange(start + 1, start + size + 1, dtype=w.dtype, device=w.device)
                i = i.view(-1, *([1] * w.dim()))
                eps = self._randn((size,) + tuple(w.shape), w)
                avg = avg + (s * -torch.expm1(-h * (N - i + 1)) / (one_minus_a * N) * eps).sum(0)
                final = final + (s * torch.exp(-h * (N - i)) * eps).sum(0)
        return Q @ (mu + avg), Q @ (mu + final)

    def _trajectory(self, op, B, X0, noise) -> Tensor:
        """All ``N`` states after burn-in, ``[N, ..., n, k]``."""
        if self.method == "euler":
            return self._euler(op, B, X0, noise, keep_trajectory=True)
        lam, Q = self._eigen(op, B)
        mu, h, s, w = self._exact_start(lam, Q, B, X0, noise)
        a = torch.exp(-h)
        out = []
        for _, size in self._chunks(self.num_samples, w.numel()):
            y = s * self._randn((size,) + tuple(w.shape), w)
            y[0] = y[0] + a * w
            d = 1
            while d < size:
                y = torch.cat([y[:d], y[d:] + a.pow(d) * y[:-d]])
                d *= 2
            w = y[-1]
            out.append(y)
        return Q @ (mu + torch.cat(out))

    # ---------------------------------------------------------------- Euler–Maruyama
    def _check_stability(self, op: LinearOperator) -> float:
        """Refuse an ``A`` known not to be positive definite (a dense ``A`` whose Cholesky
        factorisation fails; any ``A`` whose power-iteration Rayleigh quotient is ≤ 0) and a
        ``dt`` beyond the stability bound; return ``λ_max``."""
        if isinstance(op, DenseOperator):
            cholesky(symmetrize(op.A), "A")
        lam_max, exact = max_eigenvalue(op, self.power_iterations)
        if lam_max <= 0:
            raise ValueError(
                f"A is not positive definite (its largest eigenvalue is {lam_max:.3g}"
                f"{'' if exact else ' by power iteration'}); the OU process has no stationary "
                "law and would diverge. Pass a symmetric positive-definite A, or add damping."
            )
        bound = 2.0 / lam_max
        if self.dt >= bound:
            how = "=" if exact else "≈ (power iteration)"
            raise ValueError(
                f"dt={self.dt:.4g} is beyond the Euler–Maruyama stability bound 2/λ_max = "
                f"{bound:.4g} (λ_max {how} {lam_max:.4g}); the simulation would diverge. Use "
                f"dt < {bound:.4g} (e.g. {0.5 * bound:.3g}), or method='exact'."
            )
        return lam_max

    def _euler(self, op, B, X0, noise, keep_trajectory: bool):
        """Euler–Maruyama; the drift ``r = A x − b`` is watched for divergence (see
        :meth:`_divergence_limit`) every :data:`_CHECK_EVERY` steps and at the end."""
        lam_max = self._check_stability(op)
        dt, X = self.dt, X0.clone()
        scale = math.sqrt(2.0 * noise * dt)
        total = torch.zeros_like(B)
        traj = []
        limit = None
        steps = self.burnin + self.num_samples
        for step in range(steps):
            drift = op.matmat(X) - B
            if limit is None:
                limit = self._divergence_limit(drift, lam_max, noise, op.size)
            elif step % _CHECK_EVERY == 0:
                _check_divergence(drift, limit, step, dt)
            X = X - dt * drift
            if noise > 0:
                X = X + scale * self._randn(tuple(X.shape), X)
            if step >= self.burnin:
                if keep_trajectory:
                    traj.append(X)
                else:
                    total = total + X
        if limit is not None:
            _check_divergence(op.matmat(X) - B, limit, steps, dt)
        if keep_trajectory:
            return torch.stack(traj)
        return total / self.num_samples, X

    def _divergence_limit(self, drift0: Tensor, lam_max: float, noise: float, n: int) -> Tensor:
        """A bound ``[..., 1, k]`` that the drift norm ``‖A x_t − b‖`` of each run stays under
        when ``A`` is positive definite.

        Without noise, ``r ← (I − dt A) r`` with ``‖I − dt A‖ ≤ 1`` for ``dt < 2/λ_max``: the
        drift never grows. With noise it fluctuates around the Euler chain's stationary level,
        ``E‖r‖² = κ0 tr(A (I − dt A/2)⁻¹) ≤ κ0 n λ_max / (1 − dt λ_max / 2)``. Eight times their
        sum is exceeded by a positive-definite run with negligible probability (a Gaussian
        beyond 8σ: about 1e-15); a negative eigenvalue makes the drift grow like
        ``(1 + dt |λ|)^k`` past it.
        """
        level = math.sqrt(noise * n * lam_max / max(1.0 - 0.5 * self.dt * lam_max, 1e-12))
        norm = torch.linalg.vector_norm(drift0, dim=-2, keepdim=True)
        return 8.0 * (norm + level) + 1e-12 * (1.0 + torch.linalg.vector_norm(drift0))


_CHECK_EVERY = 64
"""Euler steps between two divergence checks (each check synchronises a GPU)."""


def _check_divergence(drift: Tensor, limit: Tensor, step: int, dt: float) -> None:
    norm = torch.linalg.vector_norm(drift, dim=-2, keepdim=True)
    bad = ~(norm <= limit)  # also catches NaN and inf
    if bool(bad.any()):
        worst = float(norm[bad].max()) if bool(torch.isfinite(norm[bad]).any()) else math.inf
        raise ValueError(
            f"the OU trajectory diverged: after {step} Euler steps (t = {step * dt:.3g} τ) the "
            f"drift ‖A x − b‖ is {worst:.3g}, beyond the {float(limit[bad].max()):.3g} a "
            "positive-definite A allows; A is not positive definite (or not symmetric). Pass a "
            "symmetric positive-definite A, or add damping."
        )


def _operator(A: Tensor | LinearOperator) -> LinearOperator:
    if isinstance(A, LinearOperator):
        return A
    if not torch.is_tensor(A) or A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(
            "A must be a square tensor [..., n, n] or a natvi.linalg.LinearOperator; got "
            f"{tuple(A.shape) if torch.is_tensor(A) else type(A).__name__}."
        )
    check_finite("A", A)
    return DenseOperator(A)


def max_eigenvalue(op: Tensor | LinearOperator, power_iterations: int = 50) -> tuple[float, bool]:
    """``(λ_max, exact)``: the largest eigenvalue over all batch entries.

    Exact for dense ``A`` (``eigvalsh``) and for ``λ I + U Uᵀ`` with scalar damping (through the
    ``r × r`` Gram matrix); otherwise ``power_iterations`` power iterations from a fixed start,
    inflated by 5% since the power iteration approaches ``λ_max`` from below.
    """
    op = _operator(op)
    if isinstance(op, DenseOperator):
        return float(torch.linalg.eigvalsh(symmetrize(op.A)).max()), True
    if isinstance(op, LowRankPlusDiag) and op.symmetric and op.damping.dim() == 0:
        gram = op.U.mT @ op.U
        return float(op.damping + torch.linalg.eigvalsh(gram).max().clamp_min(0)), True
    dtype = op.dtype or torch.get_default_dtype()
    g = torch.Generator().manual_seed(0)
    v = torch.randn(*op.batch_shape, op.size, 1, generator=g, dtype=dtype).to(op.device)
    est = torch.zeros(())
    for _ in range(power_iterations):
        v = v / torch.linalg.vector_norm(v, dim=-2, keepdim=True)
        Av = op.matmat(v)
        est = (v * Av).sum(-2).max()
        v = Av
    return 1.05 * float(est), False
