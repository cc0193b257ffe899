"""Distillation losses: pure tensor functions with their formulas, shapes and reductions.

- ``kd_loss``: τ²·D(p, q) with p = softmax(t/τ) (teacher), q = softmax(s/τ) (student), mean over valid tokens,
  chunked over tokens with an analytic backward (τ scalar or per token; τ gets its exact gradient, which CTKD's
  adversary needs). D is the divergence: forward KL (the default), reverse KL, skew KL or generalised JSD.
- ``DIVERGENCES``: name → per-chunk kernel (``forward_kl_chunk``, ``reverse_kl_chunk``, ``skew_kl_chunk``,
  ``jsd_chunk``), all with one signature; ``divergence_kernel`` binds α / β and checks them.
- ``kd_loss_reference``: the naive unchunked version it is tested against.

torchtune keeps its KD losses apart from the recipe in the same way: the run's logits path (``run/step.py``,
``LogitsStep``) only calls them; the fused path calls ``core/fused_loss.py``.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ctkd_tune.core.divergences import WORK_BUFFERS as _EXTRA_WORK, jsd_chunk, reverse_kl_chunk, skew_kl_chunk


# -----------------------------------------------------------------------------
# KD loss: τ² · D(softmax(t/τ) ‖ softmax(s/τ)), mean over valid tokens (D: forward KL by default)

def _softmax_(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, in place."""
    x.sub_(x.amax(dim=-1, keepdim=True)).exp_()
    return x.div_(x.sum(dim=-1, keepdim=True))


def forward_kl_chunk(s, t, tau, work, grad_s=None, need_dtau=False):
    """The per-chunk kernel of every chunked KD path: per-token KL(p ‖ q) and, if asked, its τ²-scaled gradients.

    Args:
        s, t: (n, V) student and teacher logits (any float dtype; upcast into ``work``).
        tau: (n, 1) temperature per token (float32 or float64, the dtype of ``work``).
        work: (≥3, ≥n, V) scratch in the compute dtype, reused from chunk to chunk (fresh allocations page-fault,
            and that dominates on CPU). Its contents are destroyed.
        grad_s: optional (n, V) buffer in the compute dtype; receives ∂(τ²·KL)/∂s = τ · (q − p) per token.
        need_dtau: also return ∂(τ²·KL)/∂τ per token.

    Returns:
        (kl, dtau): (n,) KL per token (not yet τ²-scaled) and (n,) ∂(τ²·KL)/∂τ, or None.

    With log q = log_softmax(s/τ), log p = log_softmax(t/τ) and d = log p − log q:
        KL   = E_p[d]
        ∂(τ²KL)/∂τ = τ · (2·KL − (E_q[log q] − E_p[log q]) − Cov_p(log p, d))
                   = τ · (KL − E_q[log q] + E_p[log p] − (E_p[d · log p] − E_p[log p] · KL))
    The τ formula follows from homogeneity: L(cs, ct, cτ) = c²·L(s, t, τ), so τ·∂L/∂τ = 2L − ⟨s, ∂L/∂s⟩ − ⟨t, ∂L/∂t⟩.
    The sums use torch's (pairwise) sum: a matmul-based row dot loses ~1e-3 of the τ-gradient in float32.
    A new divergence is a new kernel with this signature (in DIVERGENCES; WORK_BUFFERS says how many scratch buffers
    it wants); ``kd_loss`` and the fused head loss call it per chunk.
    """
    logp, logq, tmp = work[:3, :s.shape[0]]  # (n, V) each
    torch.log_softmax(torch.div(t, tau, out=tmp), dim=-1, out=logp)
    torch.log_softmax(torch.div(s, tau, out=tmp), dim=-1, out=logq)
    if grad_s is not None:  # τ · (q − p), before log q is overwritten below
        torch.exp(logq, out=grad_s).sub_(torch.exp(logp, out=tmp)).mul_(tau)
    if need_dtau:
        e_p_logp = torch.exp(logp, out=tmp).mul_(logp).sum(-1)  # (n,) −H(p)
        e_q_logq = torch.exp(logq, out=tmp).mul_(logq).sum(-1)  # (n,) −H(q)
    d = torch.sub(logp, logq, out=logq)  # log p − log q, in place of log q
    p_d = torch.exp(logp, out=tmp).mul_(d)  # p ⊙ d
    kl = p_d.sum(-1)  # (n,)
    if not need_dtau:
        return kl, None
    cov = p_d.mul_(logp).sum(-1) - e_p_logp * kl  # Cov_p(log p, d)
    return kl, tau.squeeze(1) * (kl - e_q_logq + e_p_logp - cov)


# -----------------------------------------------------------------------------
# Divergences: name → per-chunk kernel, all with forward_kl_chunk's signature (others in ctkd_tune.core.divergences)

DIVERGENCES = {"forward_kl": forward_kl_chunk, "reverse_kl": reverse_kl_chunk, "skew_kl": skew_kl_chunk,
               "jsd": jsd_chunk}
WORK_BUFFERS = {"forward_kl": 3, **_EXTRA_WORK}
"""(k, chunk, V) scratch buffers each kernel wants in ``work`` (it allocates the rest itself when given fewer)."""


def divergence_kernel(divergence: str = "forward_kl", alpha: float = 0.1, beta: float = 0.5):
    """The kernel of ``divergence`` with its parameter bound: skew_kl's α, jsd's β (both checked to lie in (0, 1)).

    The result is called as kernel(s, t, tau, work, grad_s=None, need_dtau=False), like forward_kl_chunk.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose from {', '.join(DIVERGENCES)}")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    if divergence == "skew_kl":
        return functools.partial(skew_kl_chunk, alpha=alpha)
    if divergence == "jsd":
        return functools.partial(jsd_chunk, beta=beta)
    return DIVERGENCES[divergence]


class _ChunkedKD(torch.autograd.Function):
    """Σ_i w_i · τ_i² · D_i over (N, V) logits, chunked over tokens, with an analytic backward.

    D is the divergence computed by ``kernel`` (one of DIVERGENCES). The forward keeps only (N,) vectors; the
    backward recomputes the softmaxes chunk by chunk and writes straight into the gradient (through the kernel's
    grad_s for the other divergences, which give no teacher gradient). For forward KL, for a token with weight w
    (q = softmax(s/τ), p = softmax(t/τ)):
        ∂/∂s = w · τ · (q − p)
        ∂/∂t = w · τ · p ⊙ (log p − log q − KL)
        ∂/∂τ = w · τ · (2·KL − (E_q[log q] − E_p[log q]) − Cov_p(log p, log p − log q))
    The τ formula follows from homogeneity: L(cs, ct, cτ) = c²·L(s, t, τ), so
    τ·∂L/∂τ = 2L − ⟨s, ∂L/∂s⟩ − ⟨t, ∂L/∂t⟩.
    Scratch memory: 3 (chunk_size, V) buffers in the forward, 1 in the backward (2 for non-float32 logits);
    WORK_BUFFERS[divergence] (+1 for non-float32 logits) for the others.
    """

    @staticmethod
    def forward(ctx, s, t, tau, weights, chunk_size, grad_enabled, divergence, kernel):
        # s, t: (N, V); tau: () or (N,); weights: (N,), 0 for masked tokens
        (N, V), dtype, cs = s.shape, weights.dtype, chunk_size
        tau_tok = tau.expand(N) if tau.ndim == 0 else tau  # (N,)
        need_dtau = grad_enabled and ctx.needs_input_grad[2]
        kl = torch.empty(N, dtype=dtype, device=s.device)
        dtau = torch.empty_like(kl) if need_dtau else None
        work = torch.empty(WORK_BUFFERS[divergence], min(cs, N), V, dtype=dtype, device=s.device)
        for i in range(0, N, cs):
            kl_c, dtau_c = kernel(s[i:i + cs], t[i:i + cs], tau_tok[i:i + cs, None], work, need_dtau=need_dtau)
            kl[i:i + cs] = kl_c
            if need_dtau:
                dtau[i:i + cs] = dtau_c
        del work
        loss = torch.where(weights > 0, weights * tau_tok**2 * kl, 0.0).sum()  # masked tokens cannot inject NaN
        ctx.save_for_backward(s, t, tau, weights, kl, dtau)
        ctx.chunk_size, ctx.divergence, ctx.kernel = cs, divergence, kernel
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        s, t, tau, weights, kl, dtau = ctx.saved_tensors
        (N, V), dtype, cs = s.shape, weights.dtype, ctx.chunk_size
        tau_tok = tau.expand(N) if tau.ndim == 0 else tau  # (N,)
        coef = grad_loss * weights  # (N,) ∂loss/∂L_i
        grad_s = grad_t = grad_tau = None
        if ctx.needs_input_grad[0] and ctx.divergence != "forward_kl":
            grad_s = _student_grad(ctx.kernel, WORK_BUFFERS[ctx.divergence], s, t, tau_tok, coef, cs, dtype)
        elif ctx.needs_input_grad[0]:
            grad_s = torch.empty_like(s)
            work = torch.empty(1 if s.dtype == dtype else 2, min(cs, N), V, dtype=dtype, device=s.device)
            for i in range(0, N, cs):
                tau_c, out = tau_tok[i:i + cs, None], grad_s[i:i + cs]  # (n, 1), (n, V)
                p = work[0, :out.shape[0]]
                g = out if s.dtype == dtype else work[1, :out.shape[0]]
                torch.log_softmax(torch.div(s[i:i + cs], tau_c, out=p), dim=-1, out=g).exp_()  # q
                g.sub_(_softmax_(torch.div(t[i:i + cs], tau_c, out=p))).mul_(coef[i:i + cs, None] * tau_c)
                if g is not out:
                    out.copy_(g)
        if ctx.needs_input_grad[1]:
            grad_t = torch.empty_like(t)
            work = torch.empty(3, min(cs, N), V, dtype=dtype, device=s.device)
            for i in range(0, N, cs):
                tau_c = tau_tok[i:i + cs, None]
                logp, logq, tmp = work[:, :tau_c.shape[0]]
                torch.log_softmax(torch.div(t[i:i + cs], tau_c, out=tmp), dim=-1, out=logp)
                torch.log_softmax(torch.div(s[i:i + cs], tau_c, out=tmp), dim=-1, out=logq)
                d = torch.sub(logp, logq, out=logq).sub_(kl[i:i + cs, None])  # log p − log q − KL
                grad_t[i:i + cs] = d.mul_(logp.exp_()).mul_(coef[i:i + cs, None] * tau_c)
        if ctx.needs_input_grad[2]:
            g_tau = torch.where(weights > 0, coef * dtau, 0.0)  # (N,)
            grad_tau = g_tau.sum() if tau.ndim == 0 else g_tau
        return grad_s, grad_t, grad_tau, None, None, None, None, None


def _student_grad(kernel, n_work, s, t, tau_tok, coef, cs, dtype):
    """(N, V) ∂loss/∂s in s's dtype: the kernel's per-token ∂(τ²D)/∂s chunk by chunk, times coef (N,)."""
    (N, V), upcast = s.shape, s.dtype != dtype
    grad_s = torch.empty_like(s)
    work = torch.empty(n_work + upcast, min(cs, N), V, dtype=dtype, device=s.device)
    for i in range(0, N, cs):
        out = grad_s[i:i + cs]  # (n, V)
        g = work[n_work, :out.shape[0]] if upcast else out
        kernel(s[i:i + cs], t[i:i + cs], tau_tok[i:i + cs, None], work, grad_s=g)
        g.mul_(coef[i:i + cs, None])
        if upcast:
            out.copy_(g)
    return grad_s


def tau_shaped(tau: float | torch.Tensor, n_tokens: int, dtype: torch.dtype, device) -> torch.Tensor:
    """τ as the losses take it: () for one temperature, (N,) for one per token, in `dtype` on `device`."""
    if not torch.is_tensor(tau):
        return torch.tensor(float(tau), dtype=dtype, device=device)
    if tau.numel() == 1:
        return tau.to(dtype).reshape(())
    if tau.numel() == n_tokens:
        return tau.to(dtype).reshape(n_tokens)
    raise ValueError(f"tau must be a scalar or hold one value per token ({n_tokens}), got shape {tuple(tau.shape)}")


def _prepare(student_logits, teacher_logits, tau, mask):
    """Flatten to (N, V) and build per-token τ () or (N,) and weights (N,) = mask / n_valid."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
                         f"{tuple(teacher_logits.shape)} (a vocabulary mismatch means the tokenizers differ)")
    V = student_logits.shape[-1]
    s, t = student_logits.reshape(-1, V), teacher_logits.reshape(-1, V)  # (N, V); a copy if not contiguous
    N, device = s.shape[0], s.device
    dtype = torch.promote_types(s.dtype, torch.float32)  # float32, or float64 for float64 inputs
    if not torch.is_tensor(tau) and not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    tau = tau_shaped(tau, N, dtype, device)
    if mask is None:
        weights = torch.full((N,), 1.0 / max(N, 1), dtype=dtype, device=device)
    else:
        if mask.numel() != N:
            raise ValueError(f"mask must have the logits' leading shape {tuple(student_logits.shape[:-1])}, "
                             f"got {tuple(mask.shape)}")
        valid = mask.reshape(N).to(device=device, dtype=torch.bool)
        weights = valid.to(dtype) / valid.sum().clamp(min=1).to(dtype)
    return s, t, tau, weights


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float | torch.Tensor,
            mask: torch.Tensor | None = None, chunk_size: int = 1024, divergence: str = "forward_kl",
            alpha: float = 0.1, beta: float = 0.5) -> torch.Tensor:
    """CTKD distillation loss, memory-lean: mean over valid tokens of τ² · D(softmax(t/τ), softmax(s/τ)).

        loss = (1/|M|) Σ_{i∈M} τ_i² D(p_i, q_i),   p = softmax(t/τ) (teacher), q = softmax(s/τ) (student)

    with M the valid tokens (mask == 1 / True; all tokens if mask is None) and D, by ``divergence``:
        forward_kl  KL(p ‖ q) = Σ_v p_v (log p_v − log q_v)                    (the default; CTKD's loss)
        reverse_kl  KL(q ‖ p)
        skew_kl     KL(p ‖ α·p + (1−α)·q)                                      (DistiLLM; α = ``alpha``)
        jsd         β·KL(p ‖ m) + (1−β)·KL(q ‖ m),  m = β·p + (1−β)·q          (GKD / TRL; β = ``beta``)
    Each is a true divergence (it includes Σ p log p), so ∂/∂τ is unbiased; τ² is not detached and the teacher's
    softmax depends on τ, so the gradient w.r.t. τ flows through both. All tokens masked → exactly 0, with zero
    gradients. Properties (tested): all ≥ 0, = 0 iff p = q; reverse_kl(s, t) = forward_kl(t, s); jsd is
    symmetric at β = 0.5; skew_kl → forward KL as α → 0 and → 0 as α → 1.

    Args:
        student_logits: (..., V), any float dtype (bf16 is upcast chunk by chunk); flattened to (N, V).
        teacher_logits: (..., V), same shape; usually from a no_grad forward (its gradient is supported for
            forward_kl only; the others raise if it requires grad).
        tau: float, 0-d / one-element tensor, or one value per token ((N,) or the leading shape).
        mask: optional (...) bool / 0-1 tensor with the logits' leading shape.
        chunk_size: tokens per chunk.
        divergence: one of DIVERGENCES.
        alpha, beta: skew_kl's α and jsd's β, each in (0, 1) (checked whatever the divergence).

    Returns:
        0-d float32 tensor (float64 for float64 inputs).

    Memory: the forward keeps only (N,) vectors and the backward recomputes the softmaxes per chunk, so above
    the inputs it needs the gradient (N, V) plus WORK_BUFFERS[divergence] (3 or 4) float32 (chunk_size, V)
    scratch buffers. Pass contiguous logits: reshaping a non-contiguous slice (e.g. logits[:, :-1]) copies it.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    kernel = divergence_kernel(divergence, alpha, beta)
    if divergence != "forward_kl" and teacher_logits.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"divergence {divergence!r} gives no gradient to the teacher logits (only forward_kl "
                         "does): detach them or compute them under torch.no_grad()")
    s, t, tau, weights = _prepare(student_logits, teacher_logits, tau, mask)
    return _ChunkedKD.apply(s, t, tau, weights, chunk_size, torch.is_grad_enabled(), divergence, kernel)


def kd_loss_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float | torch.Tensor,
                      mask: torch.Tensor | None = None, divergence: str = "forward_kl", alpha: float = 0.1,
                      beta: float = 0.5) -> torch.Tensor:
    """Naive unchunked ``kd_loss`` (same formulas, arguments and reduction) on autograd, for tests and benchmarks.

    Materialises several (N, V) float32 tensors; with a scalar τ, no mask and forward KL it equals
    F.kl_div(F.log_softmax(s/τ, -1), F.log_softmax(t/τ, -1), reduction="batchmean", log_target=True) · τ².
    """
    divergence_kernel(divergence, alpha, beta)  # the same checks
    s, t, tau, weights = _prepare(student_logits, teacher_logits, tau, mask)
    dtype = weights.dtype
    tau_col = tau.reshape(-1, 1)  # (1, 1) or (N, 1)
    log_q = F.log_softmax(s.to(dtype) / tau_col, dim=-1)  # (N, V)
    log_p = F.log_softmax(t.to(dtype) / tau_col, dim=-1)  # (N, V)

    def kl(log_x, log_y):  # (N,) KL(x ‖ y) from log-probabilities
        return F.kl_div(log_y, log_x, reduction="none", log_target=True).sum(-1)

    def log_mix(w):  # log(w·p + (1−w)·q)
        return torch.logaddexp(log_p + math.log(w), log_q + math.log1p(-w))

    if divergence == "forward_kl":
        div = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)  # (N,)
    elif divergence == "reverse_kl":
        div = kl(log_q, log_p)
    elif divergence == "skew_kl":
        div = kl(log_p, log_mix(alpha))
    else:
        log_m = log_mix(beta)
        div = beta * kl(log_p, log_m) + (1 - beta) * kl(log_q, log_m)
    return (weights * tau_col.squeeze(1) ** 2 * div).sum()
