"""GPyTorch interop: a variational distribution whose q(u) lives in any natvi parameterisation.

A GPyTorch user switches to natvi's natural gradients by changing two lines of GPyTorch's
natural-gradient recipe: the variational distribution, and ``gpytorch.optim.NGD`` (same
``num_data`` and lr values). A third, optional, makes each iteration cheaper:
:class:`NatviVariationalStrategy` in place of GPyTorch's ``VariationalStrategy`` (or
:class:`NatviUnwhitenedVariationalStrategy` for ``UnwhitenedVariationalStrategy``): the same
ELBO and trajectory, computed from q's moments without GPyTorch re-factoring S.
Example::

    import gpytorch, torch, natvi
    from natvi.gp.gpytorch import NatviVariationalDistribution, NatviVariationalStrategy
    from natvi.parameterizations import Natural

    X = torch.linspace(-2, 2, 100, dtype=torch.float64).unsqueeze(-1)
    y = torch.sin(3 * X[:, 0])
    N = y.size(0)

    class GPModel(gpytorch.models.ApproximateGP):
        def __init__(self, Z):
            q_u = NatviVariationalDistribution(Z.size(0), parameterization=Natural())  # line 1
            super().__init__(NatviVariationalStrategy(self, Z, q_u))  # optional: line 3
            self.mean_module = gpytorch.means.ZeroMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(x), self.covar_module(x))

    model = GPModel(X[::10].clone()).double()
    likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
    mll = gpytorch.mlls.VariationalELBO(likelihood, model, num_data=N)
    ngd = natvi.optim.NaturalGradient(model.variational_parameters(), num_data=N, lr=0.1)  # 2
    adam = torch.optim.Adam([*model.hyperparameters(), *likelihood.parameters()], lr=0.01)
    for i in range(20):
        ngd.zero_grad(); adam.zero_grad()
        loss = -mll(model(X), y)
        loss.backward()
        ngd.step(); adam.step()

``num_data=N`` says that the loss is GPyTorch's per-datum ``VariationalELBO`` (the total ELBO
divided by N), exactly as for GPyTorch's ``NGD(params, num_data=N, lr=...)``: GPyTorch's lr
values then mean the same step in natvi, and ``lr = 1`` is still the conjugate optimum.
An ordinary optimiser given q's coordinates in constrained coordinates (``Natural``,
``Expectation``, ...; e.g. ``Adam(model.parameters())``) raises ``ValueError`` before its first
step: an ordinary gradient step would leave the precision's domain.

q(u) is held by a :class:`natvi.GaussianVariational` submodule (``.q``), which is what natvi's
natural-gradient optimiser looks for; its parameters are named ``...variational_...`` so that
``ApproximateGP.variational_parameters()`` / ``hyperparameters()`` split them as usual. With
GPyTorch's whitened ``VariationalStrategy`` (and :class:`NatviVariationalStrategy`) q is over the
whitened ``v``; with ``UnwhitenedVariationalStrategy`` (and
:class:`NatviUnwhitenedVariationalStrategy`) over ``u``.
"""

from __future__ import annotations

import weakref

import torch
from gpytorch.distributions import MultivariateNormal
from gpytorch.distributions.multivariate_normal import kl_mvn_mvn
from gpytorch.lazy import LazyEvaluatedKernelTensor
from gpytorch.settings import _linalg_dtype_cholesky
from gpytorch.utils.errors import CachingError
from gpytorch.utils.memoize import add_to_cache, cached, get_from_cache
from gpytorch.variational import (
    UnwhitenedVariationalStrategy,
    VariationalStrategy,
    _VariationalDistribution,
)
from linear_operator.operators import (
    CholLinearOperator,
    DenseLinearOperator,
    DiagLinearOperator,
    MatmulLinearOperator,
    SumLinearOperator,
    TriangularLinearOperator,
)
from linear_operator.utils.cholesky import psd_safe_cholesky
from torch import Tensor
from torch.distributions import register_kl
from torch.optim.optimizer import register_optimizer_step_pre_hook

from natvi._linalg import batch_shape
from natvi.gp.base import _same, _snapshot
from natvi.gp.conditionals import (
    _stationary_form,
    fixed_kernel_state,
    kernel_diag,
    kernel_matrix,
    marginals,
    minus_identity,
    solve_block,
    standard_kl,
    whiten_q,
)
from natvi.optim.natural_gradient import NaturalGradient
from natvi.parameterizations import Natural, Parameterization
from natvi.variational import GaussianVariational, owner

__all__ = [
    "NatviUnwhitenedVariationalStrategy",
    "NatviVariationalDistribution",
    "NatviVariationalStrategy",
    "refuse_ordinary_steps",
]


def refuse_ordinary_steps(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Optimiser pre-step hook: an ordinary optimiser may not step natvi's constrained coordinates.

    Registered for every ``torch.optim.Optimizer`` when this module is imported (the README's
    two-line switch keeps a user's ``Adam(model.parameters())`` otherwise, which fails later
    with a non-positive-definite precision). Raises ``ValueError`` before any parameter moves.
    """
    if isinstance(optimizer, NaturalGradient):
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            q = owner(p)
            if q is not None and q.parameterization.constrained:
                raise ValueError(
                    f"{type(optimizer).__name__} was given the coordinates of a natvi q in "
                    f"{q.parameterization!r} coordinates {q.parameterization.names}; an ordinary "
                    "gradient step leaves their domain (the precision or covariance must stay "
                    "positive definite). Give q to natvi.optim.NaturalGradient("
                    "model.variational_parameters(), num_data=N, lr=...) and only "
                    "model.hyperparameters() (and the likelihood's parameters) to "
                    f"{type(optimizer).__name__}; for an ordinary-gradient baseline build q with "
                    "parameterization=MeanCholesky()."
                )


_HOOK = register_optimizer_step_pre_hook(refuse_ordinary_steps)


class _GPyTorchGaussianVariational(GaussianVariational):
    """The q held inside GPyTorch: registered as a virtual ``_VariationalDistribution`` so that
    GPyTorch's ``variational_parameters()`` (which only looks at parameters sitting directly on
    such modules) yields ξ and ``hyperparameters()`` skips them."""


_VariationalDistribution.register(_GPyTorchGaussianVariational)


class NatviVariationalDistribution(_VariationalDistribution):
    """``q(u) = N(m, S)`` over ``[*batch_shape, M]`` held in a natvi parameterisation.

    Args:
        num_inducing_points: M.
        batch_shape: GPyTorch batch shape (e.g. ``torch.Size([L])`` for L independent latents).
        parameterization: any :class:`natvi.parameterizations.Parameterization` (default
            ``Natural()``); a diagonal one gives a mean-field q (GPyTorch's
            ``MeanFieldVariationalDistribution`` analogue).
        mean_init_std: GPyTorch's initial jitter of the mean around the prior mean.
        dtype, device: of the parameters (``model.to(...)`` moves them later as usual).

    ``forward()`` returns ``MultivariateNormal(m, S)`` computed afresh from ξ, so gradients reach
    the parameters. GPyTorch calls :meth:`initialize_variational_distribution` (q ← prior, mean
    jittered) on the first training call; to keep a q you set yourself, fill the strategy's
    ``variational_params_initialized`` buffer with 1.
    """

    def __init__(
        self,
        num_inducing_points: int,
        batch_shape: tuple[int, ...] = (),
        parameterization: Parameterization | None = None,
        mean_init_std: float = 1e-3,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(num_inducing_points, torch.Size(batch_shape), mean_init_std)
        self.q = _GPyTorchGaussianVariational(
            num_inducing_points,
            tuple(batch_shape),
            parameterization if parameterization is not None else Natural(),
            dtype=dtype,
            device=device,
        )

    @property
    def parameterization(self) -> Parameterization:
        return self.q.parameterization

    def forward(self) -> MultivariateNormal:
        m, S = self.q.meancov()
        return MultivariateNormal(m, _factored(S, self.parameterization.diagonal))

    @torch.no_grad()
    def initialize_variational_distribution(self, prior_dist: MultivariateNormal) -> None:
        """q ← prior, with the mean jittered by ``mean_init_std`` (as GPyTorch's own classes)."""
        shape = self.shape()
        mean = prior_dist.mean.expand(shape)
        mean = mean + self.mean_init_std * torch.randn_like(mean)
        cov = prior_dist.covariance_matrix.expand(*shape, shape[-1])
        if self.parameterization.diagonal:
            cov = cov.diagonal(dim1=-2, dim2=-1)
        self.q.set_meancov(mean.to(self.dtype), cov.to(self.dtype))


def _factored(S: Tensor, diagonal: bool):
    """S for GPyTorch as its Cholesky factor: GPyTorch then takes log det S, solves and
    root-decomposes exactly at every M (a dense S above ``gpytorch.settings.max_cholesky_size``,
    800, gets CG, Lanczos and a stochastic log det, which made the ELBO and the natural gradient
    wrong)."""
    if diagonal:
        return DiagLinearOperator(S)
    return CholLinearOperator(TriangularLinearOperator(psd_safe_cholesky(S)))


def _standard_kl(m: Tensor, S: Tensor, logdet: Tensor) -> Tensor:
    """``KL(N(m, S) ‖ N(0, I)) [*b]``; ``S`` full ``[*b, M, M]`` or variances ``[*b, M]``."""
    return standard_kl(m, S, logdet, S.dim() == m.dim())


class _KnownDiagonal(MatmulLinearOperator):
    """``left @ right`` whose diagonal was already computed (``diagonal [*b, N]``); any
    reshaped, indexed or transposed copy is a plain product again."""

    def __init__(self, left, right, diagonal: Tensor | None = None) -> None:
        super().__init__(left, right)
        self._known_diagonal = diagonal

    def _diagonal(self) -> Tensor:
        if self._known_diagonal is None:
            return super()._diagonal()
        return self._known_diagonal


def _full_output(mu_x: Tensor, L_zz: Tensor, K_zx: Tensor | None, A_t: Tensor | None, data_data,
                 m_t: Tensor, S_t: Tensor, diagonal: bool) -> MultivariateNormal:
    """q(f) with ``diag=False`` in training, from the whitened q ``(m̃, S̃)``: the mean and the
    variances by :func:`~natvi.gp.conditionals.marginals`, and the full covariance
    ``data_data + K_xz C K_zx``, ``C = L_zz⁻ᵀ (S̃ − I) L_zz⁻¹`` — or, from a kept solved block
    ``A_t = (L_zz⁻¹ K_zx)ᵀ`` (``K_zx`` then ``None``), the same ``data_data + A_t (S̃ − I) A_tᵀ``
    — evaluated only on demand; its diagonal is those variances (the multi-output wrappers ask
    for ``diag=False``, and in training GPyTorch's likelihoods read only the variances)."""
    zero = torch.zeros((), dtype=m_t.dtype, device=m_t.device)
    mean, var_update = marginals(L_zz, K_zx, zero, m_t, S_t, diagonal, solved=A_t)
    D = minus_identity(S_t, diagonal)
    if A_t is not None:
        batch = batch_shape(A_t.shape[:-2], D.shape[:-2])
        A_t = A_t.expand(*batch, *A_t.shape[-2:])
        update = _KnownDiagonal(A_t, MatmulLinearOperator(D.expand(*batch, *D.shape[-2:]),
                                                          A_t.mT), var_update)
        return MultivariateNormal(mu_x + mean, SumLinearOperator(data_data, update))
    C = torch.linalg.solve_triangular(L_zz.mT, D, upper=True)  # L⁻ᵀ (S̃ − I)
    C = torch.linalg.solve_triangular(L_zz.mT, C.mT, upper=True)  # L⁻ᵀ (S̃ − I) L⁻¹
    update = _KnownDiagonal(K_zx.mT, MatmulLinearOperator(C, K_zx), var_update)
    return MultivariateNormal(mu_x + mean, SumLinearOperator(data_data, update))


class _StrategyMVN(MultivariateNormal):
    """q(u) as natvi's strategies hand it to GPyTorch: a ``MultivariateNormal`` that knows its
    strategy, so that its KL to that strategy's own prior — what GPyTorch's multi-output
    wrappers compute with ``torch.distributions.kl_divergence`` — is the strategy's closed form
    from q's moments (no Cholesky of S and its backward); any other KL is GPyTorch's."""

    def __init__(self, mean: Tensor, covariance_matrix, strategy=None, **kwargs) -> None:
        # (GPyTorch rebuilds distributions as self.__class__(mean=..., covariance_matrix=...):
        # such a derived one knows no strategy and takes GPyTorch's KL)
        super().__init__(mean, covariance_matrix, **kwargs)
        self._natvi_strategy = _no_strategy if strategy is None else weakref.ref(strategy)


def _no_strategy() -> None:
    return None


@register_kl(_StrategyMVN, MultivariateNormal)
def _kl_strategy_mvn(q: _StrategyMVN, p: MultivariateNormal) -> Tensor:
    strategy = q._natvi_strategy()
    if strategy is not None and strategy.variational_distribution is q:
        kl = strategy._own_prior_kl(p)
        if kl is not None:
            return kl
    return kl_mvn_mvn(q, p)


class _FromMoments:
    """What natvi's strategies share: the distribution check, q's moments ``(m, S, log det
    S)`` from one ``q.moments()`` call per forward pass (GPyTorch's cache rules: cleared at
    every training call), which q(f), the KL and ``variational_distribution`` all read, and the
    prior's blocks of a training pass (:meth:`_prior`), kept while the prior is fixed."""

    #: Keep ``L_zz`` and the solved cross block ``(L_zz⁻¹ K_zx)ᵀ`` across training passes while
    #: the prior is fixed: a closed-form kernel (:func:`~natvi.gp.conditionals.kernel_matrix`)
    #: whose hyperparameters take no gradient, and inducing inputs and inputs that take none,
    #: all equal by value to those the blocks were computed from (compared at every pass, so an
    #: in-place change is seen), with the same ``jitter_val`` — as natvi's own
    #: ``SVGP.reuse_fixed_prior``. ``False`` recomputes them at every pass.
    reuse_fixed_prior: bool = True

    def __init__(
        self,
        model,
        inducing_points: Tensor,
        variational_distribution: NatviVariationalDistribution,
        learn_inducing_locations: bool = True,
        jitter_val: float | None = None,
    ) -> None:
        if not isinstance(variational_distribution, NatviVariationalDistribution):
            stock = next(c for c in type(self).__mro__ if c.__module__.startswith("gpytorch"))
            raise TypeError(
                f"{type(self).__name__} needs a natvi.gp.gpytorch.NatviVariationalDistribution, "
                f"got {type(variational_distribution).__name__}; use "
                f"gpytorch.variational.{stock.__name__} for GPyTorch's own distributions."
            )
        super().__init__(model, inducing_points, variational_distribution,
                         learn_inducing_locations, jitter_val)

    @property
    def _diagonal_q(self) -> bool:
        return self._variational_distribution.parameterization.diagonal

    @cached(name="natvi_moments_memo")
    def moments(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(m [*b, M], S [*b, M, M] (mean-field: [*b, M]), log det S [*b])`` of q."""
        return self._variational_distribution.q.moments()

    @property
    @cached(name="variational_distribution_memo")
    def variational_distribution(self) -> MultivariateNormal:
        m, S, _ = self.moments()
        return _StrategyMVN(m, DiagLinearOperator(S) if self._diagonal_q
                            else DenseLinearOperator(S), self)

    def _own_prior_kl(self, prior) -> Tensor | None:
        """``self.kl_divergence()`` when ``prior`` is this strategy's own cached p(u) (a
        multi-output wrapper asks GPyTorch's generic KL of the two distributions), else
        ``None``."""
        try:
            own = get_from_cache(self, "prior_distribution_memo")
        except CachingError:
            return None
        return self.kl_divergence() if prior is own else None

    def _prior(self, x: Tensor, inducing_points: Tensor, **kwargs) -> tuple:
        """The prior's blocks for a training pass: ``(μ_z, μ_x, L_zz, K_zx, A_t, k_xx,
        data_data, owned)`` from one evaluation of the model's prior at ``[Z; X]`` (``K_zz``
        and ``K_xz`` as one ``[M + N, M]`` kernel block, so that ``K_zx = K_xzᵀ`` is
        column-major: the triangular solve with it copies nothing); ``data_data()`` is the lazy
        ``K_xx`` (only ``diag=False`` asks for it); ``L_zz`` is :meth:`_factor` of ``K_zz``.

        When the model's forward returns its kernel lazily (GPyTorch's default) and the kernel is
        one of natvi's closed forms (:func:`~natvi.gp.conditionals.kernel_matrix`), the blocks
        and ``k_xx`` are natvi's (``owned``: a fresh tensor :func:`marginals` may overwrite);
        otherwise GPyTorch evaluates them. While the prior is fixed (:attr:`reuse_fixed_prior`)
        ``L_zz``, ``k_xx`` and ``A_t = (L_zz⁻¹ K_zx)ᵀ`` are kept, and ``K_zx`` is ``None``;
        otherwise ``A_t`` is ``None``."""
        M = inducing_points.size(-2)
        full_output = self.model.forward(torch.cat([inducing_points, x], dim=-2), **kwargs)
        full_covar = full_output.lazy_covariance_matrix
        mean = full_output.mean
        mu_z, mu_x = mean[..., :M], mean[..., M:]

        def data_data():
            return full_covar[..., M:, M:]

        key = self._fixed_prior_key(full_covar)
        kept = self.__dict__.get("_natvi_kept_prior")
        if key is not None and kept is not None and _same(kept[0], key):
            return mu_z, mu_x, kept[1], None, kept[2], kept[3], data_data, False
        K_z, kxx = _closed_form_blocks(full_covar, M)
        owned = K_z is not None
        if not owned:
            K_z = full_covar[..., :, :M].to_dense()
            kxx = full_covar[..., M:, M:].diagonal(dim1=-1, dim2=-2)
        L_zz, K_zx = self._factor(K_z[..., :M, :]), K_z[..., M:, :].mT
        if key is None:
            self.__dict__.pop("_natvi_kept_prior", None)
            return mu_z, mu_x, L_zz, K_zx, None, kxx, data_data, owned
        with torch.no_grad():
            A_t = solve_block(L_zz, K_zx, owned)
        self.__dict__["_natvi_kept_prior"] = (_snapshot(key), L_zz, A_t, kxx)
        return mu_z, mu_x, L_zz, None, A_t, kxx, data_data, False

    def _fixed_prior_key(self, covar) -> tuple | None:
        """What the prior's blocks are computed from when they may be kept (see
        :attr:`reuse_fixed_prior`), else ``None``."""
        X = _lazy_kernel_input(covar) if self.reuse_fixed_prior else None
        if X is None or (torch.is_grad_enabled() and X.requires_grad):
            return None
        state = fixed_kernel_state(covar.kernel, X)
        if state is None:
            return None
        return (*state, X, float(self.jitter_val), _linalg_dtype_cholesky.value())


def _lazy_kernel_input(covar) -> Tensor | None:
    """The inputs ``X`` of GPyTorch's lazily evaluated ``k(X, X)`` when natvi can evaluate it
    in closed form (no extra kernel arguments), else ``None``."""
    if not isinstance(covar, LazyEvaluatedKernelTensor) or covar.params or (
            covar.last_dim_is_batch or covar.x1 is not covar.x2):
        return None
    return covar.x1 if _stationary_form(covar.kernel, covar.x1) is not None else None


def _closed_form_blocks(covar, M: int) -> tuple[Tensor | None, Tensor | None]:
    """``(k([Z; X], Z) [*b, M + N, M], k(x, x) [*b, N])`` in natvi's closed form when ``covar``
    is GPyTorch's lazily evaluated ``k([Z; X], [Z; X])`` of a closed-form kernel (no extra
    kernel arguments), else ``(None, None)``."""
    X = _lazy_kernel_input(covar)
    if X is None:
        return None, None
    return kernel_matrix(covar.kernel, X, X[..., :M, :]), kernel_diag(covar.kernel, X[..., M:, :])


class NatviVariationalStrategy(_FromMoments, VariationalStrategy):
    r"""GPyTorch's whitened ``VariationalStrategy`` for a :class:`NatviVariationalDistribution`,
    computed from q's moments directly: the same ELBO and natural step, fewer operations.

    A drop-in for ``gpytorch.variational.VariationalStrategy`` (same arguments, same
    ``jitter_val``, same whitened q over ``v = L_zz⁻¹ u``, same ``ApproximateGP`` /
    ``VariationalELBO`` / ``num_data`` recipe). With ``K_zz + jitter·I = L_zz L_zzᵀ`` (GPyTorch's
    Cholesky: its ``psd_safe_cholesky`` in its Cholesky dtype) and ``A = L_zz⁻¹ K_zx``:

        q(f_n) = N(μ(x_n) + A_nᵀ m,  k(x_n, x_n) + jitter + A_nᵀ (S − I) A_n)
        KL(q(v) ‖ N(0, I)) = ½ (tr S + mᵀm − M − log det S)

    In training, ``(m, S, log det S)`` come from one call of ``q.moments()`` per forward pass
    (``Natural``: one Cholesky of the precision, whose backward also records ``∇_η L`` for
    :class:`~natvi.optim.NaturalGradient`), shared by q(f) and the KL; GPyTorch's stock strategy
    instead factors S again for the KL (its Cholesky and backward). q(f) goes through
    :func:`natvi.gp.conditionals.marginals`, whose backward skips ``∂/∂K_zx`` when
    hyperparameters and ``Z`` are fixed; ``K_zz`` and ``K_zx`` come from one kernel evaluation.
    With ``diag=False`` (``IndependentMultitaskVariationalStrategy``, ``LMCVariationalStrategy``)
    the full covariance is kept lazy behind those variances. While the prior is fixed
    (hyperparameters frozen and ``Z`` not learned, a closed-form kernel: see
    :attr:`reuse_fixed_prior`) ``L_zz`` and ``A`` are kept across training passes, compared by
    value at every pass. Eval mode is GPyTorch's.

    ``variational_distribution`` is ``MultivariateNormal(m, S)`` with S a dense operator (a
    diagonal one for a mean-field q); this strategy never solves with S.

    Example::

        q_u = NatviVariationalDistribution(Z.size(0))
        super().__init__(NatviVariationalStrategy(self, Z, q_u))  # instead of VariationalStrategy
    """

    def forward(self, x: Tensor, inducing_points: Tensor, inducing_values: Tensor,
                variational_inducing_covar=None, diag: bool = True, **kwargs) -> MultivariateNormal:
        if not self.training:
            return super().forward(x, inducing_points, inducing_values,
                                   variational_inducing_covar, diag=diag, **kwargs)
        _, mu_x, L_zz, K_zx, A_t, kxx, data_data, owned = self._prior(
            x, inducing_points, **kwargs)
        m, S, _ = self.moments()
        if diag:
            mean, var = marginals(L_zz, K_zx, kxx + self.jitter_val, m, S, self._diagonal_q,
                                  overwrite_K=owned, solved=A_t)
            return MultivariateNormal(mu_x + mean, DiagLinearOperator(var))
        return _full_output(mu_x, L_zz, K_zx, A_t, data_data().add_jitter(self.jitter_val), m, S,
                            self._diagonal_q)

    def _factor(self, K_zz: Tensor) -> Tensor:
        """GPyTorch's factor of ``K_zz + jitter·I`` (its ``psd_safe_cholesky``, in its Cholesky
        dtype)."""
        eye = torch.eye(K_zz.shape[-1], dtype=K_zz.dtype, device=K_zz.device)
        L_zz = psd_safe_cholesky((K_zz + self.jitter_val * eye).type(_linalg_dtype_cholesky.value()))
        return L_zz.type(K_zz.dtype)

    def kl_divergence(self) -> Tensor:
        """``KL(q(v) ‖ N(0, I)) [*b]`` in closed form from q's moments (no factorisation of S)."""
        return _standard_kl(*self.moments())


class NatviUnwhitenedVariationalStrategy(_FromMoments, UnwhitenedVariationalStrategy):
    r"""GPyTorch's ``UnwhitenedVariationalStrategy`` for a :class:`NatviVariationalDistribution`
    (q over ``u = f(Z)``, prior ``N(μ(Z), K_zz + jitter·I)``), computed from q's moments.

    In training q is whitened once per forward pass,
    ``m̃ = L_zz⁻¹ (m − μ(Z))``, ``S̃ = L_zz⁻¹ S L_zz⁻ᵀ``, ``log det S̃ = log det S − log det
    (K_zz + jitter·I)`` (two triangular solves, no Cholesky of S), and then

        q(f_n) = N(μ(x_n) + A_nᵀ m̃,  k(x_n, x_n) + A_nᵀ (S̃ − I) A_n),   A = L_zz⁻¹ K_zx
        KL(q(u) ‖ p(u)) = KL(N(m̃, S̃) ‖ N(0, I))

    as :class:`NatviVariationalStrategy` does. Differences from GPyTorch's strategy: it clamps
    ``k(x_n, x_n) − A_nᵀA_n`` at 0 (differs only where rounding makes that negative), and its KL
    read before any forward pass uses a prior with its default jitter 1e-3 (here ``jitter_val``
    always). With ``diag=False`` (the multi-output wrappers) the covariance is lazy and exact,
    ``K_xx + K_xz L_zz⁻ᵀ (S̃ − I) L_zz⁻¹ K_zx`` with the variances above as its known diagonal
    (GPyTorch's training form keeps only the diagonal of ``K_xx − Q_xx``: the variances agree,
    off-diagonal entries, which no GPyTorch likelihood reads in training, are the exact ones).
    Eval mode and ``x = Z`` run GPyTorch's own code with S handed over as its Cholesky factor.
    A fixed prior's ``L_zz`` and ``A`` are kept as in :class:`NatviVariationalStrategy`.

    Example::

        super().__init__(NatviUnwhitenedVariationalStrategy(self, Z, q_u))
    """

    def forward(self, x: Tensor, inducing_points: Tensor, inducing_values: Tensor,
                variational_inducing_covar=None, diag: bool = True, **kwargs) -> MultivariateNormal:
        m, S, logdet = self.moments()
        if not self.training or torch.equal(x, inducing_points):
            return super().forward(x, inducing_points, m, self._q_factored(), diag=diag, **kwargs)
        mu_z, mu_x, L_zz, K_zx, A_t, kxx, data_data, owned = self._prior(
            x, inducing_points, **kwargs)
        whitened = whiten_q(m - mu_z, S, L_zz, self._diagonal_q, logdet)
        add_to_cache(self, "natvi_whitened_memo", whitened)
        # p(u) as GPyTorch's own training pass caches it: a wrapper's KL (the multi-output
        # strategies call GPyTorch's generic KL with this prior) must see jitter_val, not the
        # default prior's 1e-3
        add_to_cache(self, "prior_distribution_memo", MultivariateNormal(
            mu_z, CholLinearOperator(TriangularLinearOperator(L_zz))))
        if not diag:
            return _full_output(mu_x, L_zz, K_zx, A_t, data_data(), whitened[0], whitened[1],
                                False)
        mean, var = marginals(L_zz, K_zx, kxx, whitened[0], whitened[1], False, overwrite_K=owned,
                              solved=A_t)
        return MultivariateNormal(mu_x + mean, DiagLinearOperator(var))

    @cached(name="natvi_factored_memo")
    def _q_factored(self):
        """q's covariance as GPyTorch's own code wants it (its Cholesky factor), once per pass."""
        return _factored(self.moments()[1], self._diagonal_q)

    def _factor(self, K_zz: Tensor) -> Tensor:
        eye = torch.eye(K_zz.shape[-1], dtype=K_zz.dtype, device=K_zz.device)
        return psd_safe_cholesky(K_zz + self.jitter_val * eye)

    def kl_divergence(self) -> Tensor:
        """``KL(q(u) ‖ N(μ(Z), K_zz + jitter·I)) [*b]`` from the whitened moments of the last
        training forward pass (every training pass but ``x = Z`` goes through natvi's own), else
        whitened here (one kernel evaluation at Z, no Cholesky of S)."""
        try:
            return _standard_kl(*get_from_cache(self, "natvi_whitened_memo"))
        except CachingError:
            pass
        m, S, logdet = self.moments()
        prior = self.model.forward(self.inducing_points)
        L_zz = self._factor(prior.lazy_covariance_matrix.to_dense())
        return _standard_kl(*whiten_q(m - prior.mean, S, L_zz, self._diagonal_q, logdet))
