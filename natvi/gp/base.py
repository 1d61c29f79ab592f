"""What SVGP and VGP share: the ELBO from q(f) marginals, predictions, parameter groups.

A model computes, from its ``q`` (a :class:`natvi.GaussianVariational` at ``model.q``) through
autograd, the marginals of ``q(f)`` at the inputs and ``KL(q ‖ p)``; the total ELBO is then

    ELBO = (N / B) Σ_{n ∈ batch} E_{q(f_n)}[log p(y_n | f_n)] − KL(q ‖ p).

Nothing that depends on q is kept across calls. What depends only on a *fixed* prior — the
Cholesky factor of ``k(P, P) + jitter·I`` at the prior points and, for SVGP's ELBO, the solved
cross block ``L_zz⁻¹ K_zx`` of the inputs — is kept while the kernel (one of the closed forms
of :func:`~natvi.gp.conditionals.kernel_matrix`), the prior points and the inputs are equal by
value to those it was computed from and no gradient flows to them (hyperparameters frozen, as
in a q-only phase). Every call compares them, so an in-place change is seen;
``model.reuse_fixed_prior = False`` recomputes everything at every call. With q in
:class:`~natvi.parameterizations.Natural` coordinates, one latent function and a likelihood with
closed-form expectation terms, an SVGP's ELBO is one autograd node whose reverse mode is written
out (:mod:`natvi.gp.fused`, whitened or not, with the prior kept or learned): the same formulas
as node by node, with no graph between them.
"""

from __future__ import annotations

from collections.abc import Iterator

import gpytorch
import torch
from torch import Tensor, nn

from natvi._validation import check_finite
from natvi.gp.conditionals import (
    chol_with_jitter,
    default_jitter,
    fixed_kernel_state,
    kernel_matrix,
    whiten_q,
    whitened_kl,
)
from natvi.likelihoods.base import Likelihood
from natvi.parameterizations import DiagNatural, Natural, Parameterization
from natvi.variational import GaussianVariational

__all__ = ["VariationalGP"]


def _snapshot(values: tuple) -> tuple:
    """``values`` with every tensor copied (detached), so a later in-place change shows."""
    return tuple(v.detach().clone() if isinstance(v, Tensor) else v for v in values)


def _same(kept: tuple, values: tuple) -> bool:
    """Whether ``values`` equal a :func:`_snapshot`: tensors by shape, dtype, device and value,
    modules by identity, anything else by ``==``."""
    if len(kept) != len(values):
        return False
    for a, b in zip(kept, values):
        if isinstance(a, Tensor) or isinstance(b, Tensor):
            if not (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape
                    and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)):
                return False
        elif isinstance(a, nn.Module) or isinstance(b, nn.Module):
            if a is not b:
                return False
        elif a != b:
            return False
    return True


def resolve_parameterization(
    parameterization: Parameterization | None, q_diag: bool | None
) -> Parameterization:
    """The coordinates of q: ``Natural()`` / ``DiagNatural()`` by default.

    ``q_diag=None`` follows the parameterisation (diagonal ones give a mean-field q); an explicit
    ``q_diag`` that contradicts it is an error.
    """
    if parameterization is None:
        return DiagNatural() if q_diag else Natural()
    if q_diag is not None and bool(q_diag) != parameterization.diagonal:
        kind = "diagonal" if parameterization.diagonal else "full-covariance"
        raise ValueError(
            f"q_diag={q_diag} but parameterization={parameterization!r} is {kind}; pass a "
            f"{'diagonal' if q_diag else 'full'} parameterisation (e.g. "
            f"{'DiagNatural()' if q_diag else 'Natural()'}) or leave q_diag unset."
        )
    return parameterization


class VariationalGP(nn.Module):
    """Base of :class:`~natvi.gp.SVGP` and :class:`~natvi.gp.VGP` (not used directly).

    Subclasses implement ``_qf_and_kl(X, training)`` returning q(f) marginals ``[*b, N]`` (prior
    mean included) and ``KL(q ‖ p)``, and :meth:`predict_f`.

    Attributes:
        q: the variational distribution, a :class:`~natvi.GaussianVariational`.
        jitter: added to the diagonal of prior covariances before a Cholesky; ``None`` means
            :func:`~natvi.gp.conditionals.default_jitter` of the dtype (1e-6 in float64, 1e-4 in
            float32).
        needs_full_batch: ``False``; ``True`` for a model whose q holds one variable per
            training datum (VGP), which cannot be trained on shards of the data.
        reuse_fixed_prior: keep the prior's factor (and SVGP's solved cross block) across calls
            while kernel, prior points and inputs are unchanged and take no gradient (module
            docstring); ``False`` recomputes them at every call.
    """

    q: GaussianVariational
    needs_full_batch: bool = False
    reuse_fixed_prior: bool = True

    def __init__(
        self,
        kernel: gpytorch.kernels.Kernel,
        likelihood: Likelihood,
        mean: gpytorch.means.Mean | None,
        num_latent: int,
        jitter: float | None,
    ) -> None:
        super().__init__()
        if not isinstance(kernel, gpytorch.kernels.Kernel):
            raise ValueError(f"kernel must be a gpytorch.kernels.Kernel, got {type(kernel).__name__}.")
        if not isinstance(likelihood, Likelihood):
            raise ValueError(
                f"likelihood must be a natvi.likelihoods.Likelihood, got {type(likelihood).__name__}."
            )
        if int(num_latent) < 1:
            raise ValueError(f"num_latent must be a positive integer, got {num_latent}.")
        if likelihood.num_latent != int(num_latent):
            raise ValueError(
                f"num_latent={num_latent} but {type(likelihood).__name__} needs num_latent="
                f"{likelihood.num_latent}; pass num_latent={likelihood.num_latent}."
            )
        kb = tuple(kernel.batch_shape)
        if kb not in ((), (int(num_latent),)):
            raise ValueError(
                f"kernel.batch_shape is {kb}; use a kernel with batch_shape () (shared by all "
                f"latents) or ({num_latent},) (one per latent function)."
            )
        self.kernel = kernel
        self.likelihood = likelihood
        self.mean = mean if mean is not None else gpytorch.means.ZeroMean()
        self.num_latent = int(num_latent)
        self.jitter = jitter

    def _jitter(self, dtype: torch.dtype) -> float:
        return default_jitter(dtype) if self.jitter is None else float(self.jitter)

    # The prior of q lives at a set of points: the inducing inputs Z (SVGP, "K_zz") or the
    # training inputs X (VGP, "K_xx"). Subclasses name them; everything below is shared.
    _prior_name: str = "K"

    def _prior_points(self) -> Tensor:
        raise NotImplementedError

    def _chol_prior(self) -> Tensor:
        """Lower Cholesky factor of ``k(P, P) + jitter·I`` at the prior points ``P`` (the kept
        one while the prior is fixed: module docstring)."""
        P = self._prior_points()
        key = self._fixed_prior_key(P)
        kept = self._kept().get("prior")
        if key is not None and kept is not None and _same(kept[0], key):
            return kept[1]
        L = chol_with_jitter(kernel_matrix(self.kernel, P, P), self._jitter(P.dtype),
                             self._prior_name)
        self._kept().clear()  # what was computed from another prior is stale
        if key is not None:
            self._kept()["prior"] = (_snapshot(key), L)
        return L

    def _fixed_prior_key(self, P: Tensor) -> tuple | None:
        """What the prior at ``P`` is computed from, when it is fixed (no gradient flows to the
        kernel or ``P``, closed-form kernel, ``reuse_fixed_prior``), else ``None``."""
        if not self.reuse_fixed_prior or (torch.is_grad_enabled() and P.requires_grad):
            return None
        state = fixed_kernel_state(self.kernel, P)
        return None if state is None else (*state, P, self._jitter(P.dtype))

    def _kept(self) -> dict:
        """What is kept of a fixed prior: ``"prior"`` -> ``(key, L)``, and what a subclass
        derives from that ``L`` (cleared with it). A plain attribute: not in the state dict."""
        kept = self.__dict__.get("_kept_prior")
        if kept is None:
            kept = self.__dict__["_kept_prior"] = {}
        return kept

    def _init_q(self, parameterization: Parameterization) -> GaussianVariational:
        """``q`` at the prior: ``N(0, I)`` whitened, ``N(0, K + jitter·I)`` (or its diagonal)."""
        P = self._prior_points()
        n = P.shape[0]
        mean0, cov0 = None, None
        if not self.whiten:
            with torch.no_grad():
                L = self._chol_prior()
                cov0 = (L @ L.mT).expand(*self._batch, n, n)
                if self.q_diag:
                    cov0 = cov0.diagonal(dim1=-2, dim2=-1)
                mean0 = torch.zeros(*self._batch, n, dtype=P.dtype, device=P.device)
        return GaussianVariational(
            n, self._batch, parameterization, mean=mean0, cov=cov0, dtype=P.dtype, device=P.device
        )

    def _whitened_q(self, L: Tensor) -> tuple[Tensor, Tensor, Tensor, bool]:
        """Whitened ``(m̃, S̃, log det S̃)`` of ``q`` and whether ``S̃`` is held as a diagonal."""
        m, S, logdet_S = self.q.moments()
        m_t, S_t, logdet = whiten_q(m, S, None if self.whiten else L, self.q_diag, logdet_S)
        return m_t, S_t, logdet, self.q_diag and self.whiten

    @property
    def _batch(self) -> tuple[int, ...]:
        return (self.num_latent,) if self.num_latent > 1 else ()

    def _plus_prior_mean(self, f: Tensor, X: Tensor) -> Tensor:
        """``f [*b, N] + μ(X)`` (a ``ZeroMean`` adds nothing: no zeros tensor, no addition)."""
        if type(self.mean) is gpytorch.means.ZeroMean:
            shape = (*self._batch, X.shape[-2]) if self.num_latent > 1 else (X.shape[-2],)
            return f if f.shape == shape else f.expand(torch.broadcast_shapes(f.shape, shape))
        mu = self.mean(X)
        return f + (mu.expand(*self._batch, X.shape[-2]) if self.num_latent > 1 else mu)

    def _to_lik(self, x: Tensor) -> Tensor:
        """``[*b, N]`` -> the likelihood's ``[N]`` or ``[N, L]`` (broadcast shared latents)."""
        if self.num_latent == 1:
            return x.reshape(x.shape[-1])
        return x.expand(self.num_latent, x.shape[-1]).mT

    def _check_X(self, X: Tensor, name: str = "X") -> Tensor:
        check_finite(name, X)
        if X.dim() != 2:
            raise ValueError(f"{name} must have shape [N, D]; got {tuple(X.shape)}.")
        return X

    def _qf_and_kl(self, X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def _fused_elbo(self, X: Tensor, y: Tensor, num_data: int | None) -> Tensor | None:
        """The ELBO as one closed-form autograd node where the model allows it
        (:mod:`natvi.gp.fused`), else ``None`` (then node by node)."""
        return None

    def elbo(self, X: Tensor, y: Tensor, num_data: int | None = None) -> Tensor:
        """The total ELBO, a scalar tensor, differentiable in every parameter.

        Args:
            X: inputs ``[B, D]``.
            y: targets ``[B]``.
            num_data: total number of data N when ``(X, y)`` is a minibatch (the likelihood term
                is scaled by ``N / B``); ``None`` means ``X`` is all the data.
        """
        X = self._check_X(X)
        if y.shape[:1] != X.shape[:1]:
            raise ValueError(f"y must have {X.shape[0]} rows like X; got shape {tuple(y.shape)}.")
        fused = self._fused_elbo(X, y, num_data)
        if fused is not None:
            return fused
        f_mean, f_var, kl = self._qf_and_kl(X)
        ve = self.likelihood.variational_expectations(self._to_lik(f_mean), self._to_lik(f_var), y)
        if num_data is None:
            return ve.sum() - kl
        return float(num_data) / X.shape[0] * ve.sum() - kl

    def predict_f(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """Marginals of ``q(f)`` at ``X [N, D]``: ``(mean, var)``, ``[N]`` or ``[N, L]``."""
        raise NotImplementedError

    def predict_y(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """Predictive mean and variance of ``y`` (multi-class: class probabilities ``[N, C]``)."""
        return self.likelihood.predict_mean_and_var(*self.predict_f(X))

    def predict_log_density(self, X: Tensor, y: Tensor) -> Tensor:
        """``log p(y_n | data)`` under ``q`` per datum, ``[N]``."""
        return self.likelihood.predict_log_density(*self.predict_f(X), y)

    def prior_kl(self) -> Tensor:
        """``KL(q ‖ p)`` (a scalar tensor)."""
        m_t, S_t, logdet, diag = self._whitened_q(self._chol_prior())
        return whitened_kl(m_t, S_t, logdet, diag)

    def variational_parameters(self) -> Iterator[nn.Parameter]:
        """The ξ parameters of ``q`` (for a natural-gradient optimiser)."""
        return self.q.parameters()

    def hyperparameters(self) -> Iterator[nn.Parameter]:
        """Kernel, mean-function and likelihood parameters (and learnable inducing inputs)."""
        own = {id(p) for p in self.q.parameters()}
        return (p for p in self.parameters() if id(p) not in own)
