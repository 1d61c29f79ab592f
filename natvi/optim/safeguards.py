r"""Keeping q valid: how a natural step is proposed, checked, and retried.

A natural step in ξ coordinates is ``ξ' = ξ − γ ñ`` with ``ñ`` the natural gradient of the
negative ELBO. Nothing in that arithmetic keeps ``q`` a Gaussian: ``−2 θ2'`` can lose positive
definiteness (GPflow produces NaN here at γ = 1 on ordinary 2-D classification), and some
coordinates (``Expectation``, ``MeanCholesky``) can leave their domain. natvi's steps are atomic:
:func:`is_valid` checks the proposal, and an invalid one is never kept — the parameters are
restored bit-identically. What happens next is the safeguard's policy:

- :class:`Backoff` (the default) — propose the plain step; if it is invalid, retry with
  ``γ ← factor · γ`` up to ``max_tries`` times; if every try fails, skip the step. Each retry is
  an *event* (recorded in the optimiser's state and warned about with :class:`SafeguardWarning`).
  With a closure it also rejects a non-finite loss and, outside natural coordinates, a loss
  increase (``monotone="auto"``; see :meth:`Safeguard.is_monotone`).
- :class:`Riemannian` — the improved Bayesian learning rule (Lin, Schmidt & Khan 2020), whose
  precision update is positive definite by construction (see :func:`riemannian_update`);
  backs off like :class:`Backoff` on anything else (e.g. a non-finite loss).
- :class:`Strict` (``safeguard="none"``) — no retry: an invalid step restores q and raises.

Why Backoff is the default: in natural coordinates the plain step at γ = 1 is *exact* for a
conjugate model (it lands on the optimum in one step), and for a log-concave likelihood
(Bernoulli, Poisson, Gaussian) the γ ≤ 1 step gives ``P' = (1 − γ) P + γ (K⁻¹ + Aᵀ W A)`` with
``W ⪰ 0``, a convex combination of positive-definite matrices — valid without any correction.
The Riemannian correction would spoil the one-step conjugate property (it adds ``(γ²/2) G S G``
to the precision). Backoff costs nothing on steps that are fine and only shrinks the ones that
are not (γ > 1, non-log-concave likelihoods, Monte-Carlo noise, non-natural coordinates).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from natvi._linalg import symmetrize
from natvi.optim.engine import SafeguardWarning
from natvi.parameterizations import Parameterization

__all__ = [
    "SafeguardWarning",
    "Safeguard",
    "Backoff",
    "Riemannian",
    "Strict",
    "as_safeguard",
    "plain_update",
    "riemannian_update",
    "is_valid",
]


def plain_update(xi: Sequence[Tensor], nat: Sequence[Tensor], lr: float) -> tuple[Tensor, ...]:
    """``ξ' = ξ − γ ñ`` coordinate by coordinate (new tensors)."""
    return tuple(torch.add(x, n, alpha=-lr) for x, n in zip(xi, nat))


def riemannian_update(
    parameterization: Parameterization, xi: Sequence[Tensor], nat: Sequence[Tensor], lr: float
) -> tuple[Tensor, Tensor]:
    r"""The improved Bayesian learning rule (iBLR) step in natural coordinates.

    Let ``P = −2 θ2`` be the precision, ``S = P⁻¹``, ``m = S θ1`` and ``(g1, g2) = ∇_η L`` the
    natural gradient (``L`` the negative ELBO). The plain step ``θ2' = θ2 − γ g2`` is, in
    precision terms, ``P' = P + γ G`` with

        ``G = 2 g2 = 2 ∇_η2 L``  (``[..., M, M]``, symmetric; ``= −E_q[∇²_u log p] − P``
        for the negative ELBO ``L``, so ``P + G`` is the conjugate target precision).

    The iBLR of Lin, Schmidt & Khan (2020, eq. for the Gaussian with precision) adds the
    Riemannian correction ``ΔP = (γ²/2) G S G``:

        ``P' = P + γ G + (γ²/2) G S G = ½ P + ½ (P + γ G) S (P + γ G)  ≻ 0``

    — positive definite for *any* symmetric G and γ, because ``½ P ≻ 0`` and the second term is
    positive semi-definite. The mean moves as in the plain rule, ``m' = m − γ P'⁻¹ ∇_m L``; since
    ``∇_m L = g1 + G m`` this is, in natural coordinates,

        ``θ1' = θ1 − γ g1 + ΔP m``,   ``θ2' = θ2 − γ g2 − ½ ΔP``.

    The correction is O(γ²), so for small γ the rule agrees with the plain step to first order.
    The diagonal family uses the same formulas elementwise (``G S G → G² S``).

    Args:
        parameterization: :class:`~natvi.parameterizations.Natural` or
            :class:`~natvi.parameterizations.DiagNatural` (or a subclass).
        xi: ``(θ1 [..., M], θ2 [..., M, M])`` (diagonal: both ``[..., M]``), a valid point.
        nat: ``(g1, g2)``, the natural gradient, shaped like ``xi``.
        lr: γ > 0.

    Returns:
        ``(θ1', θ2')``.
    """
    theta1, theta2 = xi
    g1, g2 = nat
    if parameterization.diagonal:
        P = -2.0 * theta2
        G = 2.0 * g2
        dP = 0.5 * lr**2 * G * G / P
        m = theta1 / P
        return theta1 - lr * g1 + dP * m, theta2 - lr * g2 - 0.5 * dP
    L_P = torch.linalg.cholesky(-2.0 * symmetrize(theta2))
    G = 2.0 * symmetrize(g2)
    W = torch.linalg.solve_triangular(L_P, G, upper=False)  # L_P⁻¹ G, so G S G = Wᵀ W
    dP = 0.5 * lr**2 * symmetrize(W.mT @ W)
    m = torch.cholesky_solve(theta1.unsqueeze(-1), L_P).squeeze(-1)
    theta1_new = theta1 - lr * g1 + (dP @ m.unsqueeze(-1)).squeeze(-1)
    return theta1_new, theta2 - lr * g2 - 0.5 * dP


def is_valid(parameterization: Parameterization, xi: Sequence[Tensor]) -> bool:
    """Whether ξ is in the domain ``parameterization`` declares
    (:meth:`~natvi.parameterizations.Parameterization.in_domain`)."""
    return parameterization.in_domain(*xi)


class Safeguard:
    """Policy for invalid natural steps: proposal rule, shrink factor and retry budget.

    Args:
        factor: ``γ`` is multiplied by this on each retry, in (0, 1).
        max_tries: retries after the first proposal (0: none).
        monotone: with a closure, also reject steps that increase the loss (a backtracking
            line search): ``True``, ``False``, or ``"auto"`` (see :meth:`is_monotone`).

    With a closure the loss is always re-evaluated after a proposal and a non-finite loss is
    rejected like an invalid q.
    """

    name = "safeguard"
    retry = True

    def __init__(
        self, factor: float = 0.5, max_tries: int = 20, monotone: bool | str = "auto"
    ) -> None:
        if not (0.0 < float(factor) < 1.0):
            raise ValueError(f"factor must lie in (0, 1) (γ is multiplied by it), got {factor}.")
        if isinstance(max_tries, bool) or not isinstance(max_tries, int) or max_tries < 0:
            raise ValueError(f"max_tries must be an integer >= 0, got {max_tries!r}.")
        if monotone not in (True, False, "auto"):
            raise ValueError(f"monotone must be True, False or 'auto', got {monotone!r}.")
        self.factor = float(factor)
        self.max_tries = max_tries if self.retry else 0
        self.monotone = monotone

    def check(self, parameterization: Parameterization) -> None:
        """Raise ``ValueError`` if this safeguard cannot handle ``parameterization``."""

    def is_monotone(self, parameterization: Parameterization) -> bool:
        """Whether a step in these coordinates must not increase the closure's loss.

        ``"auto"``: yes unless the parameterisation declares ``exact_steps`` (full natural
        coordinates, :class:`~natvi.parameterizations.Natural`). There the γ ≤ 1
        step is a convex combination of precisions (safe for log-concave likelihoods) and γ = 1
        is exact for conjugate models, so a loss check would only cost time. The mean-field
        :class:`DiagNatural` step at γ = 1 updates every factor at once (a Jacobi sweep) and
        overshoots on coupled posteriors — on two-moons (N = 4000, M = 50) its ELBO diverges
        from the second step — so it is checked. In other coordinates the step
        ``ξ − γ ñ`` is first order in a curved chart and can overshoot while staying a valid
        Gaussian: e.g. in ``MeanCholesky`` at γ = 1 the scale update is Newton's iteration for
        ``P^{-1/2}``, which diverges from the prior once the posterior precision exceeds three
        times the prior's. The check needs a closure and costs one evaluation per try.
        """
        if self.monotone == "auto":
            return not parameterization.exact_steps
        return bool(self.monotone)

    def propose(
        self,
        parameterization: Parameterization,
        xi: Sequence[Tensor],
        nat: Sequence[Tensor],
        lr: float,
    ) -> tuple[Tensor, ...]:
        """The candidate ξ' for step size ``lr`` (checked by the optimiser with is_valid)."""
        return plain_update(xi, nat, lr)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(factor={self.factor}, max_tries={self.max_tries})"


class Backoff(Safeguard):
    """Plain step; if invalid, retry with ``γ ← factor·γ`` (at most ``max_tries`` times)."""

    name = "backoff"


class Strict(Safeguard):
    """Plain step, no retry: an invalid step restores q and raises ``ValueError``."""

    name = "none"
    retry = False


class Riemannian(Safeguard):
    """iBLR step (:func:`riemannian_update`), positive definite by construction; natural
    coordinates only. Other failures (non-finite values or loss) back off as in Backoff."""

    name = "riemannian"

    def check(self, parameterization: Parameterization) -> None:
        if not parameterization.natural_coordinates:
            raise ValueError(
                f"safeguard='riemannian' needs natural coordinates (Natural or DiagNatural), "
                f"but a group uses {parameterization!r}; use safeguard='backoff' for it, or hold "
                "q in Natural()."
            )

    def propose(self, parameterization, xi, nat, lr):
        return riemannian_update(parameterization, xi, nat, lr)


_BY_NAME = {"backoff": Backoff, "riemannian": Riemannian, "none": Strict}


def as_safeguard(safeguard: str | Safeguard | None) -> Safeguard:
    """``"backoff"`` | ``"riemannian"`` | ``"none"`` (or ``None``) | a :class:`Safeguard`."""
    if isinstance(safeguard, Safeguard):
        return safeguard
    key = "none" if safeguard is None else safeguard
    if not isinstance(key, str) or key not in _BY_NAME:
        raise ValueError(
            f"unknown safeguard {safeguard!r}; choose one of 'backoff', 'riemannian', 'none', "
            "or pass a natvi.optim.safeguards.Safeguard instance."
        )
    return _BY_NAME[key]()
