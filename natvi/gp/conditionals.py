"""The hot path of variational GPs: kernel blocks, q(u) in whitened coordinates, q(f) marginals, KL.

Everything is written in whitened coordinates ``v = L_zz⁻¹ u`` (``K_zz + jitter·I = L_zz L_zzᵀ``):
an unwhitened ``q(u) = N(m, S)`` is first mapped to ``q(v) = N(L_zz⁻¹ m, L_zz⁻¹ S L_zz⁻ᵀ)``
(``O(M³)``), after which both cases share

    A = L_zz⁻¹ K_zx                                         [*b, M, N]   (one triangular solve)
    mean_n = μ(x_n) + A[:, n]ᵀ m̃
    var_n  = k(x_n, x_n) + A[:, n]ᵀ (S̃ − I) A[:, n]         (one [M, M] @ [M, N] product)
    KL(q(u) ‖ p(u)) = KL(N(m̃, S̃) ‖ N(0, I)) = ½ (tr S̃ + m̃ᵀm̃ − M − log det S̃).

No ``N × N`` matrix and no explicit inverse of a kernel matrix is formed. Batch dimensions
``[*b]`` are latent functions (``[L]``) or empty; they broadcast between kernel and q.
"""

from __future__ import annotations

import math

import gpytorch
import torch
from linear_operator import to_dense
from torch import Tensor

from natvi._linalg import batch_shape, cholesky, identity, symmetrize

__all__ = [
    "kernel_matrix",
    "cross_kernel_block",
    "kernel_diag",
    "default_jitter",
    "chol_with_jitter",
    "whiten_q",
    "minus_identity",
    "solve_block",
    "marginals",
    "fixed_kernel_state",
    "standard_kl",
    "whitened_kl",
]


def kernel_matrix(kernel: gpytorch.kernels.Kernel, X1: Tensor, X2: Tensor) -> Tensor:
    """Dense ``k(X1, X2)`` ``[*kernel.batch_shape, N1, N2]`` for ``X1 [N1, D]``, ``X2 [N2, D]``.

    ``ScaleKernel`` over ``RBFKernel`` or ``MaternKernel`` (ν ∈ {½, 3⁄2, 5⁄2}), or either alone,
    without ``active_dims``, are evaluated in closed form (:func:`_stationary_matrix`: one GEMM
    and one to six passes over the ``[N1, N2]`` block, where GPyTorch's lazy kernel stack
    dispatches ~50 operations); every other kernel goes through GPyTorch. Both agree to rounding.
    """
    return _kernel_block(kernel, X1, X2)[0]


def cross_kernel_block(kernel: gpytorch.kernels.Kernel, Z: Tensor, X: Tensor
                       ) -> tuple[Tensor, bool]:
    """``(K_zx [*b, M, N], owned)``: ``K_zx`` as the transpose of ``k(X, Z)``, so column-major
    (a triangular solve with it copies nothing), and whether it is a fresh tensor of natvi's own
    (the closed form of :func:`kernel_matrix`), which :func:`marginals` may then overwrite
    (``overwrite_K``). A block from GPyTorch may be a kernel's stored tensor: never owned."""
    K_xz, owned = _kernel_block(kernel, X, Z)
    return K_xz.mT, owned


def kernel_diag(kernel: gpytorch.kernels.Kernel, X: Tensor) -> Tensor:
    """``k(x_n, x_n)`` ``[*kernel.batch_shape, N]`` (the outputscale, for the stationary kernels
    of :func:`kernel_matrix`)."""
    form = _stationary_form(kernel, X)
    if form is not None:
        shape = (*kernel.batch_shape, X.shape[-2])
        if form[1] is None:
            return torch.ones(shape, dtype=X.dtype, device=X.device)
        return form[1].outputscale.unsqueeze(-1).expand(shape)
    with gpytorch.settings.lazily_evaluate_kernels(False):
        return to_dense(kernel(X, X, diag=True))


def _kernel_block(kernel: gpytorch.kernels.Kernel, X1: Tensor, X2: Tensor) -> tuple[Tensor, bool]:
    """``(k(X1, X2), owned)``: the closed form when :func:`_stationary_form` allows it (a fresh
    tensor of natvi's own), else GPyTorch's dense block (``owned`` False)."""
    form = _stationary_form(kernel, X1)
    if form is not None:
        base, scaled, nu = form
        scale = None if scaled is None else scaled.outputscale
        return _stationary_matrix(base.lengthscale, scale, nu, X1, X2), True
    with gpytorch.settings.lazily_evaluate_kernels(False):
        return to_dense(kernel(X1, X2)), False


def fixed_kernel_state(kernel: gpytorch.kernels.Kernel, X: Tensor) -> tuple | None:
    """What a closed-form kernel's blocks are computed from — ``(kernel, base kernel, ν,
    lengthscale, outputscale or None)`` — when no gradient flows to its parameters, else
    ``None`` (also for every kernel that goes through GPyTorch, whose state natvi does not
    know). Two states with the same objects and equal values give the same blocks."""
    form = _stationary_form(kernel, X)
    if form is None:
        return None
    base, scaled, nu = form
    # (the closed form reads these two parameters only: a gradient to them means not fixed)
    raw_ls = base.raw_lengthscale
    raw_os = None if scaled is None else scaled.raw_outputscale
    if torch.is_grad_enabled() and (raw_ls.requires_grad
                                    or (raw_os is not None and raw_os.requires_grad)):
        return None
    return (kernel, base, nu, base.raw_lengthscale_constraint.transform(raw_ls),
            None if scaled is None else scaled.raw_outputscale_constraint.transform(raw_os))


_MATERN_NU = (0.5, 1.5, 2.5)


def _stationary_form(
    kernel: gpytorch.kernels.Kernel, X: Tensor
) -> tuple[gpytorch.kernels.Kernel, gpytorch.kernels.ScaleKernel | None, float | None] | None:
    """``(base kernel, the ScaleKernel around it or None, ν or None for RBF)`` for the kernels
    :func:`kernel_matrix` evaluates in closed form, else ``None``. Type checks only: the
    constrained parameters are read where they are used."""
    scaled, base = None, kernel
    if type(kernel) is gpytorch.kernels.ScaleKernel:
        if kernel.active_dims is not None:
            return None
        scaled, base = kernel, kernel.base_kernel
    if base.active_dims is not None:
        return None
    if type(base) is gpytorch.kernels.RBFKernel:
        nu = None
    elif type(base) is gpytorch.kernels.MaternKernel and base.nu in _MATERN_NU:
        nu = float(base.nu)
    else:
        return None
    raw = base.raw_lengthscale
    if raw.shape[-1] not in (1, X.shape[-1]) or raw.dtype != X.dtype:
        return None  # GPyTorch's own path raises its error
    return base, scaled, nu


def _stationary_matrix(
    ls: Tensor, scale: Tensor | None, nu: float | None, X1: Tensor, X2: Tensor
) -> Tensor:
    """``σ² exp(−½ r²)`` (RBF) or ``σ² p_ν(r) exp(−√(2ν) r)`` (Matérn), ``r = ‖(x − x′) / ℓ‖``.

    Squared distances by the expanded form ``|a|² + |b|² − 2 a·b`` after centring both inputs
    on the mean of ``X2`` (as GPyTorch does, against cancellation far from the origin); when
    ``X1 is X2`` the diagonal distance is exactly 0 (so ``k(x, x) = σ²`` to the last bit, and
    a Matérn distance there is not ``√rounding``). The RBF exponent ``log σ² − ½ r²`` is one
    GEMM of inputs augmented by two columns, so the block costs that GEMM and one ``exp`` pass.
    (An outputscale that underflowed to exactly 0 gives ``k = 0``, as it should, but a NaN
    gradient for it; ``softplus`` underflows below −745.)
    """
    same = X1 is X2
    centre = X2.mean(-2, keepdim=True)
    B = (X2 - centre) / ls  # [*b, N2, D]
    A = B if same else (X1 - centre) / ls  # [*b, N1, D]
    batch, n1, n2 = A.shape[:-2], A.shape[-2], B.shape[-2]
    sq_a = A.square().sum(-1, keepdim=True)  # [*b, N1, 1]
    sq_b = B.square().sum(-1, keepdim=True)  # [*b, N2, 1]
    on_diag = torch.eye(n1, dtype=torch.bool, device=A.device) if same else None
    if nu is None:
        ones = torch.ones(*batch, 1, 1, dtype=A.dtype, device=A.device)
        s2 = ones if scale is None else scale[..., None, None].expand(*batch, 1, 1)
        # one GEMM of the augmented inputs [a, −½|a|², 1] · [b, 1, log σ² − ½|b|²] gives the
        # exponent a·b − ½|a|² − ½|b|² + log σ² directly (no bias copy, no pass to subtract)
        e = torch.cat([A, -0.5 * sq_a, ones.expand(*batch, n1, 1)], -1) @ torch.cat(
            [B, ones.expand(*batch, n2, 1), s2.log() - 0.5 * sq_b], -1).mT
        k = e.exp_()  # (in place also under autograd: e is the product's own output)
        if not same:
            return k
        if A.requires_grad or (scale is not None and scale.requires_grad):
            return torch.where(on_diag, s2, k)
        k.diagonal(dim1=-2, dim2=-1).copy_(s2.squeeze(-1).expand(*batch, n1))
        return k
    A3, Bt3 = A.reshape(-1, n1, A.shape[-1]), B.reshape(-1, n2, B.shape[-1]).mT
    d2 = torch.baddbmm(sq_b.mT.reshape(-1, 1, n2), A3, Bt3, alpha=-2.0).reshape(*batch, n1, n2)
    r = (d2 + sq_a).clamp_min(1e-30).sqrt()
    if same:
        r = torch.where(on_diag, 0.0, r)
    k = torch.exp(-math.sqrt(2.0 * nu) * r)
    if nu == 1.5:
        k = k * (1.0 + math.sqrt(3.0) * r)
    elif nu == 2.5:
        k = k * (1.0 + math.sqrt(5.0) * r + (5.0 / 3.0) * r.square())
    return k if scale is None else k * scale[..., None, None]


def default_jitter(dtype: torch.dtype) -> float:
    """Diagonal jitter: ``1e-6`` in float64, ``1e-4`` in float32 and lower precision."""
    return 1e-6 if dtype == torch.float64 else 1e-4


def chol_with_jitter(K: Tensor, jitter: float, name: str) -> Tensor:
    """Lower Cholesky factor of ``K + jitter·I`` (``ValueError`` naming ``name`` if it fails)."""
    K = K + jitter * torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
    return cholesky(K, name)


def whiten_q(
    m: Tensor, S: Tensor, L_zz: Tensor | None, diagonal: bool, logdet_S: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``q(u) = N(m, S)`` -> whitened ``(m̃ [*b, M], S̃, log det S̃ [*b])``.

    ``L_zz=None`` means ``q`` is already whitened. ``S`` is ``[*b, M, M]``, or the variances
    ``[*b, M]`` when ``diagonal``; ``S̃`` keeps that form when whitened, and is full otherwise.
    ``logdet_S`` (``log det S [*b]``, e.g. from ``GaussianVariational.moments``) saves the
    Cholesky of ``S``: then ``S̃ = L_zz⁻¹ S L_zz⁻ᵀ`` by two triangular solves.
    """
    if L_zz is None:
        if logdet_S is not None:
            return m, S, logdet_S
        if diagonal:
            return m, S, S.log().sum(-1)
        L_S = cholesky(S, "the variational covariance S")
        return m, S, 2.0 * L_S.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    batch = batch_shape(m.shape[:-1], L_zz.shape[:-2])
    L_zz = L_zz.expand(*batch, *L_zz.shape[-2:])
    if not diagonal and logdet_S is not None:
        return whiten_full(m.expand(*batch, m.shape[-1]), S.expand_as(L_zz), L_zz, logdet_S)[:3]
    m_t = torch.linalg.solve_triangular(L_zz, m.expand(*batch, m.shape[-1]).unsqueeze(-1),
                                        upper=False).squeeze(-1)
    half_logdet_K = L_zz.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    if diagonal:
        # L⁻¹ diag(s) L⁻ᵀ = (L⁻¹ diag(√s)) (L⁻¹ diag(√s))ᵀ, the factor lower triangular.
        R = torch.linalg.solve_triangular(L_zz, torch.diag_embed(S.sqrt()).expand_as(L_zz),
                                          upper=False)
        return m_t, R @ R.mT, S.log().sum(-1) - 2.0 * half_logdet_K
    L_S = cholesky(S, "the variational covariance S")
    R = torch.linalg.solve_triangular(L_zz, L_S.expand_as(L_zz), upper=False)
    logdet = 2.0 * (L_S.diagonal(dim1=-2, dim2=-1).log().sum(-1) - half_logdet_K)
    return m_t, R @ R.mT, logdet


def whiten_full(m: Tensor, S: Tensor, L_zz: Tensor, logdet_S: Tensor
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`whiten_q` for a full ``S`` with ``log det S`` known (shapes already broadcast):
    ``(m̃ = L⁻¹ m, S̃ = sym(L⁻¹ S L⁻ᵀ), log det S − 2 Σ log L_ii)`` and the intermediates
    ``R = L⁻¹ S``, ``L⁻¹ Rᵀ`` that :func:`unwhiten_gradient` needs for ``L̄``."""
    m_t = torch.linalg.solve_triangular(L_zz, m.unsqueeze(-1), upper=False).squeeze(-1)
    half_logdet_K = L_zz.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    R = torch.linalg.solve_triangular(L_zz, S, upper=False)  # L⁻¹ S
    S_raw = torch.linalg.solve_triangular(L_zz, R.mT, upper=False)  # L⁻¹ S L⁻ᵀ
    return m_t, 0.5 * (S_raw + S_raw.mT), logdet_S - 2.0 * half_logdet_K, R, S_raw


def unwhiten_gradient(
    L_zz: Tensor, g_m_t: Tensor, g_S_t: Tensor, g_ld: Tensor | None = None,
    parts: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(∇_m, ∇_S, ∇_L)`` from the gradients of :func:`whiten_full`'s outputs ``(m̃, S̃,
    log det S̃)`` (the log-determinant's gradient passes to ``log det S`` unchanged): ``L⁻ᵀ ḡ_m̃``
    and ``L⁻ᵀ (L⁻ᵀ sym(ḡ_S̃))ᵀ``, the triangular solves that autodiff of :func:`whiten_q` runs, in
    its order; with ``parts = (m̃, R, L⁻¹ Rᵀ)`` also ``∇_L``, the three solves' ``−tril(B̄ Xᵀ)``
    and the log-determinant's ``−2 ḡ_ld / L_ii`` (else ``None``: ``L_zz`` fixed)."""
    g_m = torch.linalg.solve_triangular(L_zz.mT, g_m_t.unsqueeze(-1), upper=True).squeeze(-1)
    W = torch.linalg.solve_triangular(L_zz.mT, symmetrize(g_S_t), upper=True)
    g_S = torch.linalg.solve_triangular(L_zz.mT, W.mT, upper=True)
    if parts is None:
        return g_m, g_S, None
    m_t, R, S_raw = parts
    g_L = (W @ S_raw.mT).add_(g_S @ R.mT).add_(g_m.unsqueeze(-1) * m_t.unsqueeze(-2))
    g_L = g_L.neg_().tril_()
    g_L.diagonal(dim1=-2, dim2=-1).addcdiv_(g_ld.unsqueeze(-1).expand(m_t.shape),
                                            L_zz.diagonal(dim1=-2, dim2=-1), value=-2.0)
    return g_m, g_S, g_L


class _Marginals(torch.autograd.Function):
    """``(L, K, m̃, S̃[, log det S̃]) -> (Aᵀ m̃, colsum(A ∘ D A)[, KL])`` with ``A = L⁻¹ K``,
    ``D = S̃ − I`` and ``KL = KL(N(m̃, S̃) ‖ N(0, I))`` summed over the batch.

    Reverse mode written out (G = diag(ḡ_var), B = D A):
    ``Ā = m̃ ḡ_meanᵀ + 2 B G``, ``m̄ = A ḡ_mean``, ``D̄ = A G Aᵀ``, ``K̄ = L⁻ᵀ Ā`` and
    ``L̄ = −tril(L⁻ᵀ Ā Aᵀ) = −tril(L⁻ᵀ (m̃ m̄ᵀ + 2 D D̄))``: the last identity makes ``L̄`` cost
    ``O(M³)`` instead of another ``O(N M²)`` product, and ``K̄ = (L⁻ᵀ m̃) ḡ_meanᵀ +
    2 (L⁻ᵀ D) A G`` is one matrix product; a call costs four ``O(N M²)`` products (the solve for
    A, ``D A``, ``A G Aᵀ``, ``(L⁻ᵀ D) (A G)``). The KL term adds ``ḡ_KL m̃`` to ``m̄``,
    ``½ ḡ_KL I`` to ``S̄ = D̄`` and ``−½ ḡ_KL`` to the log-determinant's gradient — in the same
    node, so the ELBO's prior term costs no autograd graph of its own.

    ``S̃`` is ``[*b, M, M]`` (symmetric) or, when ``diagonal``, its diagonal ``[*b, M]``. ``m̃`` and
    ``S̃`` may have fewer batch dimensions than the kernel blocks (they broadcast; the KL counts
    each q once).
    """

    @staticmethod
    def forward(ctx, L: Tensor, K: Tensor, m: Tensor, S: Tensor, logdet: Tensor | None = None,
                diagonal: bool = False, overwrite: bool = False, solved: Tensor | None = None
                ) -> tuple[Tensor, ...]:
        # The solve returns A in column-major layout, so Aᵀ [*b, N, M] is contiguous; every
        # [N, M] product and elementwise pass below works on Aᵀ so that no operand is strided
        # against another (a mixed-layout ``A * (D A)`` costs ~10x a contiguous one).
        if solved is not None:  # Aᵀ given (a fixed prior's; nothing flows to L or K)
            A_t = solved
        else:
            A_t = solve_block(L, K, overwrite and not ctx.needs_input_grad[1])
        mean, var, D = marginals_forward(A_t, m, S, diagonal)
        ctx.save_for_backward(L, A_t, m, D)
        ctx.diagonal = diagonal
        if logdet is None:
            return mean, var
        ctx.logdet_shape = logdet.shape
        return mean, var, whitened_kl(m, S, logdet, diagonal)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_mean: Tensor, g_var: Tensor, g_kl: Tensor | None = None
                 ) -> tuple[Tensor | None, ...]:
        L, A_t, m, D = ctx.saved_tensors
        need_L, need_K, need_m, need_S = ctx.needs_input_grad[:4]
        need_ld = g_kl is not None and ctx.needs_input_grad[4]  # (logdet given: a KL output)
        L_bar, K_bar, m_bar, S_bar, ld_bar = marginals_backward(
            L, A_t, m, D, g_mean, g_var, g_kl, ctx.diagonal,
            (need_L, need_K, need_m, need_S, need_ld),
            ctx.logdet_shape if need_ld else None)
        return (L_bar, K_bar, m_bar, S_bar, ld_bar, None, None, None)


def marginals_forward(A_t: Tensor, m: Tensor, S: Tensor, diagonal: bool
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """``(Aᵀ m̃ [*b, N], colsum(A ∘ D A) [*b, N], D = S̃ − I)`` from ``Aᵀ [*b, N, M]``, no
    autograd (:class:`_Marginals`' forward pass; ``D`` is what its backward pass reads)."""
    D = minus_identity(S, diagonal)
    B_t = A_t @ D  # (D A)ᵀ, D symmetric
    flat = A_t.dim() == 2 and m.dim() == 1  # (one latent: a matrix-vector product)
    mean = torch.mv(A_t, m) if flat else (A_t @ m.unsqueeze(-1)).squeeze(-1)
    return mean, B_t.mul_(A_t).sum(-1), D


def marginals_backward(
    L: Tensor | None, A_t: Tensor, m: Tensor, D: Tensor, g_mean: Tensor, g_var: Tensor,
    g_kl: Tensor | None, diagonal: bool, needs: tuple[bool, bool, bool, bool, bool],
    logdet_shape: torch.Size | None = None,
) -> tuple[Tensor | None, ...]:
    """``(L̄, K̄, m̄, S̄, ld̄)`` of :class:`_Marginals` (its formulas; ``needs`` says which of
    ``L, K, m̃, S̃, log det S̃`` take a gradient, ``None`` for the others; ``g_kl`` the KL
    output's gradient or ``None``)."""
    need_L, need_K, need_m, need_S, need_ld = needs
    AG_t = A_t * g_var.unsqueeze(-1)  # (A G)ᵀ
    m_bar = None
    if need_L or need_m:
        m_bar = (torch.mv(A_t.mT, g_mean) if A_t.dim() == 2 else
                 (g_mean.unsqueeze(-2) @ A_t).squeeze(-2))
    D_bar = A_t.mT @ AG_t if need_L or need_S else None
    K_bar = L_bar = ld_bar = None
    if need_K:  # fixed hyperparameters and Z: skipped (an O(N M²) product)
        # K̄ = L⁻ᵀ Ā = (L⁻ᵀ m̃) ḡ_meanᵀ + 2 (L⁻ᵀ D) A G: a GEMM instead of an N-column solve,
        # formed as K̄ᵀ (contiguous [N, M]) and handed back transposed
        Lt_m = torch.linalg.solve_triangular(L.mT, m.unsqueeze(-1), upper=True)
        Lt_D = torch.linalg.solve_triangular(L.mT, D, upper=True)  # (both broadcast)
        K_bar = (AG_t @ (2.0 * Lt_D.mT)).addcmul_(g_mean.unsqueeze(-1), Lt_m.mT).mT
    if need_L:
        inner = m.unsqueeze(-1) * m_bar.unsqueeze(-2) + 2.0 * D @ D_bar
        L_bar = -torch.linalg.solve_triangular(L.mT, inner, upper=True).tril()
    S_bar = None
    if need_S:
        if D_bar.shape != D.shape:  # (a q shared across batch dimensions: summed here, so
            D_bar = D_bar.sum_to_size(D.shape)  # that the KL's share is added once)
        S_bar = D_bar.diagonal(dim1=-2, dim2=-1) if diagonal else D_bar
    if need_m and m_bar.shape != m.shape:
        m_bar = m_bar.sum_to_size(m.shape)
    if g_kl is not None:  # KL = ½ Σ (tr S̃ + m̃ᵀm̃ − M − log det S̃)
        if need_m:
            m_bar = torch.addcmul(m_bar, m, g_kl)
        if need_S:
            if diagonal:
                S_bar = S_bar + 0.5 * g_kl
            else:
                S_bar.diagonal(dim1=-2, dim2=-1).add_(0.5 * g_kl)
        if need_ld:
            ld_bar = (-0.5 * g_kl).expand(logdet_shape)
    return L_bar, K_bar, m_bar if need_m else None, S_bar, ld_bar


def solve_block(L_zz: Tensor, K_zx: Tensor, overwrite: bool = False) -> Tensor:
    """``Aᵀ = (L_zz⁻¹ K_zx)ᵀ`` ``[*b, N, M]``, contiguous (the solve's column-major result
    transposed). ``overwrite``: ``K_zx`` is the caller's to lose and no graph holds it, so the
    solve runs in its memory when its layout allows (LAPACK's solve overwrites its right-hand
    side; otherwise ``K_zx`` is first copied)."""
    if overwrite and K_zx.mT.is_contiguous():
        return torch.linalg.solve_triangular(L_zz, K_zx, upper=False, out=K_zx).mT
    return torch.linalg.solve_triangular(L_zz, K_zx, upper=False).mT


def minus_identity(S_t: Tensor, diagonal: bool) -> Tensor:
    """``S̃ − I`` ``[*b, M, M]`` for a whitened covariance held full, or as its diagonal
    ``[*b, M]`` when ``diagonal``."""
    if diagonal:
        return torch.diag_embed(S_t - 1.0)
    return S_t - identity(S_t.shape[-1], S_t.dtype, S_t.device)


def marginals(
    L_zz: Tensor, K_zx: Tensor, kxx: Tensor, m_t: Tensor, S_t: Tensor, diagonal: bool,
    overwrite_K: bool = False, solved: Tensor | None = None, logdet: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """q(f) marginals at N points (prior mean excluded): ``(mean [*b, N], var [*b, N])``, and
    with ``logdet`` also ``KL(N(m̃, S̃) ‖ N(0, I))`` (a scalar, as :func:`whitened_kl`).

    ``mean = Aᵀ m̃``, ``var = kxx + colsum(A ∘ (S̃ − I) A)`` with ``A = L_zz⁻¹ K_zx``, through a
    hand-written reverse mode (:class:`_Marginals`) that does not differentiate through the
    ``N``-column triangular solve and takes the KL's gradient in the same node.

    Args:
        L_zz: ``[*b, M, M]`` lower Cholesky factor of ``K_zz + jitter·I``.
        K_zx: ``[*b, M, N]``.
        kxx: prior variances ``[*b, N]``.
        m_t, S_t: whitened q, ``[*b, M]`` and ``[*b, M, M]`` (``[*b, M]`` when ``diagonal``).
        overwrite_K: the caller does not read ``K_zx`` again: when no gradient flows to it,
            ``A`` is solved in its memory (no copy of the ``[M, N]`` block; ``K_zx`` then
            holds ``A``).
        solved: ``Aᵀ`` ``[*b, N, M]`` from :func:`solve_block` when it is already known (a
            fixed prior's); then ``L_zz`` and ``K_zx`` are not read and take no gradient
            (``K_zx`` may be ``None``).
        logdet: ``log det S̃`` ``[*b]``: also return the KL.
    """
    S_shape = S_t.shape[:-1] if diagonal else S_t.shape[:-2]
    if solved is not None:
        batch = batch_shape(solved.shape[:-2], m_t.shape[:-1], S_shape)
        N, M = solved.shape[-2:]
        out = _Marginals.apply(None, None, m_t, S_t, logdet, diagonal, False,
                               solved.expand(*batch, N, M))
    else:
        batch = batch_shape(L_zz.shape[:-2], K_zx.shape[:-2], m_t.shape[:-1], S_shape)
        M, N = K_zx.shape[-2:]
        out = _Marginals.apply(
            L_zz.expand(*batch, M, M), K_zx.expand(*batch, M, N), m_t, S_t, logdet, diagonal,
            overwrite_K and K_zx.shape[:-2] == batch,
        )
    return (out[0], kxx + out[1], *out[2:])


def standard_kl(m_t: Tensor, S_t: Tensor, logdet_S_t: Tensor, diagonal: bool) -> Tensor:
    """``KL(N(m̃, S̃) ‖ N(0, I)) = ½ (tr S̃ + m̃ᵀm̃ − M − log det S̃)`` per batch element,
    ``[*b]`` (``S̃`` full ``[*b, M, M]``, or its diagonal ``[*b, M]`` when ``diagonal``)."""
    M = m_t.shape[-1]
    if m_t.dim() == 1 and not diagonal:  # (the unbatched q: four small operations)
        return torch.dot(m_t, m_t).add_(S_t.trace()).sub_(logdet_S_t).sub_(M).mul_(0.5)
    trace = S_t.sum(-1) if diagonal else S_t.diagonal(dim1=-2, dim2=-1).sum(-1)
    return 0.5 * (trace + m_t.square().sum(-1) - M - logdet_S_t)


def whitened_kl(m_t: Tensor, S_t: Tensor, logdet_S_t: Tensor, diagonal: bool) -> Tensor:
    """:func:`standard_kl` summed over batch dimensions (a scalar)."""
    kl = standard_kl(m_t, S_t, logdet_S_t, diagonal)
    return kl if kl.dim() == 0 else kl.sum()
