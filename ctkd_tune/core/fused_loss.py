"""Output head + KD + CE fused: the distillation losses from last hidden states, never holding (N, V) logits.

    kd, ce = fused_kd_ce_loss(h_s, W_s, b_s, h_t, W_t, b_t, labels, tau, mask, kd_weight=a, ce_weight=b)
    loss = a * kd + b * ce                      # the blend the forward already holds the gradient of

With s = h_s·W_sᵀ + b_s and t = h_t·W_tᵀ + b_t (the logits, (N, V)), the values are exactly the logits path's:
    kd = kd_loss(s, t, τ, mask, divergence)     mean over valid tokens of τ²·D(softmax(t/τ), softmax(s/τ))
    ce = F.cross_entropy(s, labels)             mean over labels != -100
but s and t exist only a chunk of tokens at a time, full vocabulary wide (the softmax needs whole rows). Per chunk:
the two logit matmuls (in the inputs' dtype: bf16 under autocast), the shared divergence kernel (``kd_loss``'s:
``forward_kl_chunk`` by default) and the CE in float32, then, while the chunk is at hand, the gradient of a·kd + b·ce
w.r.t. h_s, W_s and b_s. For forward KL with float32 logits (the CPU default) the same arithmetic runs with the
logits' own buffers as scratch (``_forward_kl_ce_in_place``): 4 (chunk, V) rows instead of 6, so the same memory
holds 1.5× the tokens per chunk, and the head matmuls, slow at few rows, run at more. The backward
only rescales those (or recomputes them chunk by chunk when it is asked for another blend of kd and ce). The teacher
side is constant: it gets no gradient.

Also here, through the same chunks: the held-out sums (``fused_eval_sums``: CE, KL at T = 1, top-1 agreement) and
the per-token temperature features (``fused_token_features``, equal to ``ctkd.token_features`` on the logits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from ctkd_tune.core.ctkd import token_features
from ctkd_tune.core.losses import WORK_BUFFERS, divergence_kernel, tau_shaped

MB = 2**20
IGNORE_INDEX = -100
CPU_CHUNK_MB = 224.0
"""The loop's chunk budget on CPU (`loss.fused_chunk_mb` = 0): see `ctkd_tune.run.fused_step.chunk_mb`."""


@dataclass
class _Heads:
    """Flattened, checked inputs of one call: both sides' hidden states and heads in their matmul dtype."""
    hs: torch.Tensor  # (N, Hs) student hidden, matmul dtype
    Ws: torch.Tensor  # (V, Hs)
    bs: torch.Tensor | None  # (V,)
    ht: torch.Tensor  # (N, Ht) teacher hidden, matmul dtype
    Wt: torch.Tensor  # (V, Ht)
    bt: torch.Tensor | None
    dtype: torch.dtype  # compute dtype of the softmaxes: float32 (float64 for float64 inputs)

    @property
    def shape(self) -> tuple[int, int]:
        return self.hs.shape[0], self.Ws.shape[0]


def _matmul_dtype(hidden: torch.Tensor, head: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device) and head.is_floating_point():
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, head.dtype)


def _heads(student_hidden, student_head, student_bias, teacher_hidden, teacher_head, teacher_bias) -> _Heads:
    """Check shapes (one-line ValueError naming the tensor) and cast each side to its matmul dtype."""
    for name, head in (("student_head", student_head), ("teacher_head", teacher_head)):
        if head.dim() != 2:
            raise ValueError(f"{name} must be 2-D (V, H), got shape {tuple(head.shape)}")
    for side, hidden, head, bias in (("student", student_hidden, student_head, student_bias),
                                     ("teacher", teacher_hidden, teacher_head, teacher_bias)):
        if hidden.dim() < 1 or hidden.shape[-1] != head.shape[1]:
            raise ValueError(f"{side}_hidden has hidden size {hidden.shape[-1] if hidden.dim() else None} but "
                             f"{side}_head is (V, H) = {tuple(head.shape)}")
        if bias is not None and tuple(bias.shape) != (head.shape[0],):
            raise ValueError(f"{side}_bias must have shape ({head.shape[0]},), got {tuple(bias.shape)}")
    if student_head.shape[0] != teacher_head.shape[0]:
        raise ValueError(f"student_head and teacher_head differ in vocabulary ({student_head.shape[0]} vs "
                         f"{teacher_head.shape[0]} rows): the tokenizers differ")
    hs, ht = student_hidden.reshape(-1, student_head.shape[1]), teacher_hidden.reshape(-1, teacher_head.shape[1])
    if hs.shape[0] != ht.shape[0]:
        raise ValueError(f"teacher_hidden has {ht.shape[0]} tokens but student_hidden has {hs.shape[0]}")
    mm_s, mm_t = _matmul_dtype(hs, student_head), _matmul_dtype(ht, teacher_head)
    cast = lambda x, dt: None if x is None else x.to(dt)
    const = lambda x, dt: None if x is None else x.detach().to(dt)  # the teacher side gets no gradient
    dtype = torch.promote_types(torch.promote_types(mm_s, mm_t), torch.float32)
    return _Heads(cast(hs, mm_s), cast(student_head, mm_s), cast(student_bias, mm_s),
                  const(ht, mm_t), const(teacher_head, mm_t), const(teacher_bias, mm_t), dtype)


def _chunk_tokens(x: _Heads, chunk_size: int | None, chunk_mb: float, with_grad: bool, n_work: int = 3) -> int:
    """Tokens per chunk: `chunk_size` if given, else as many as fit in `chunk_mb` of (chunk, V) buffers."""
    N, V = x.shape
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return max(1, min(chunk_size, N))
    c = torch.finfo(x.dtype).bits // 8
    row = V * (x.hs.element_size() + x.ht.element_size() + n_work * c)  # logits s, t + the kernel's work rows
    if with_grad:
        row += V * (c + (x.hs.element_size() if x.hs.dtype != x.dtype else 0))  # ∂/∂s (+ its matmul-dtype copy)
    return max(1, min(N, int(chunk_mb * MB // row)))


def _logit_chunks(x: _Heads, n: int):
    """Yield (slice, s, t): (m, V) logit chunks of both sides (m ≤ n), written into two buffers reused throughout."""
    N, V = x.shape
    s_buf = torch.empty(min(n, N), V, dtype=x.hs.dtype, device=x.hs.device)
    t_buf = torch.empty(min(n, N), V, dtype=x.ht.dtype, device=x.hs.device)
    for i in range(0, N, n):
        sl = slice(i, min(i + n, N))
        m = sl.stop - sl.start
        s = torch.mm(x.hs[sl], x.Ws.T, out=s_buf[:m]) if x.bs is None else \
            torch.addmm(x.bs, x.hs[sl], x.Ws.T, out=s_buf[:m])
        t = torch.mm(x.ht[sl], x.Wt.T, out=t_buf[:m]) if x.bt is None else \
            torch.addmm(x.bt, x.ht[sl], x.Wt.T, out=t_buf[:m])
        yield sl, s, t


def _in_place(x: _Heads, divergence: str) -> bool:
    """Whether a chunk's logits can serve as scratch: forward KL (whose in-place form is written out below) on
    logits already in the compute dtype (float32 matmuls; under bf16 autocast they are upcast into work rows)."""
    return divergence == "forward_kl" and x.hs.dtype == x.ht.dtype == x.dtype


def _work_rows(x: _Heads, divergence: str) -> tuple[bool, int]:
    """(in place?, the (chunk, V) scratch rows the sweep allocates): 1 in place, else the kernel's."""
    in_place = _in_place(x, divergence)
    return in_place, 1 if in_place else WORK_BUFFERS[divergence]


def _forward_kl_ce_in_place(s, t, tau, y, w, g=None, kd_coef=None, ce_coef=None, need_dtau=False):
    """``forward_kl_chunk`` and the CE of one chunk, computed with the logits s, t themselves as scratch (both are
    destroyed) and one work row w: the same formulas, two (m, V) rows fewer.

    tau (m, 1); y (m, 1) labels (ignored ones clamped to a valid id: their ce_coef is 0); g, if given, receives
    ce_coef·(softmax(s) − onehot(y)) + kd_coef·τ·(q − p), i.e. ∂/∂s of Σ ce_coef·CE + kd_coef·τ²·KL, with kd_coef
    and ce_coef (m, 1). Returns per-token (KL at τ, CE at T = 1, ∂(τ²KL)/∂τ or None), as (m,) tensors."""
    top = s.amax(-1, keepdim=True)  # CE first, while s is whole: CE = log Σ exp(s) − s_y
    z = torch.sub(s, top, out=w).exp_().sum(-1, keepdim=True)  # w = exp(s − max)
    ce = (top + z.log() - s.gather(1, y)).squeeze(1)
    if g is not None:
        torch.mul(w, ce_coef / z, out=g).scatter_add_(1, y, -ce_coef)
    logp = torch.log_softmax(t.div_(tau), dim=-1, out=w)
    logq = torch.log_softmax(s.div_(tau), dim=-1, out=t)
    q = torch.exp(logq, out=s)
    if g is not None:
        g.addcmul_(q, kd_coef * tau)
    e_q_logq = q.mul_(logq).sum(-1) if need_dtau else None  # −H(q)
    p = torch.exp(logp, out=s)
    if g is not None:
        g.addcmul_(p, kd_coef * tau, value=-1.0)
    d = torch.sub(logp, logq, out=t)  # log p − log q, in place of log q
    if not need_dtau:
        return p.mul_(d).sum(-1), ce, None
    e_p_logp = logp.mul_(p).sum(-1)  # −H(p); w now holds p·log p
    kl = p.mul_(d).sum(-1)
    cov = w.mul_(d).sum(-1) - e_p_logp * kl  # Cov_p(log p, d)
    return kl, ce, tau.squeeze(1) * (kl - e_q_logq + e_p_logp - cov)


def _sweep(x: _Heads, labels, tau, n, *, kernel=None, n_work=3, scales=None, w_kd=None, w_ce=None,
           grads=(False, False, False), need_dtau=False, need_agree=False, in_place=False):
    """One pass over the token chunks (one function on purpose: every branch shares the chunk loop and buffers).

    `kernel` is the divergence's per-chunk kernel (default forward KL) with `n_work` scratch rows; `in_place`
    (see `_in_place`): forward KL and CE by `_forward_kl_ce_in_place` instead, with one scratch row.
    Returns per-token (N,) D at τ, CE, ∂(τ²KL)/∂τ (or None), top-1 agreement (or None), and, when `scales` = (a, b)
    is given, the gradients (∂/∂h_s, ∂/∂W_s, ∂/∂b_s; None where `grads` says no) of
        a · Σ_i w_kd_i τ_i² KL_i + b · Σ_i w_ce_i CE_i.
    Per token, ∂/∂s = a·w_kd·τ·(q − p) + b·w_ce·(softmax(s) − onehot(label)) (kernel + CE); then
    ∂/∂h_s = (∂/∂s)·W_s, ∂/∂W_s += (∂/∂s)ᵀ·h_s, ∂/∂b_s += Σ_tokens ∂/∂s.
    """
    (N, V), dt, dev = x.shape, x.dtype, x.hs.device
    kl, ce = torch.empty(N, dtype=dt, device=dev), torch.empty(N, dtype=dt, device=dev)
    dtau = torch.empty(N, dtype=dt, device=dev) if need_dtau else None
    agree = torch.empty(N, dtype=torch.bool, device=dev) if need_agree else None
    want_grad = scales is not None and any(grads)
    kernel = kernel or divergence_kernel()
    work = torch.empty(n_work, min(n, N), V, dtype=dt, device=dev)  # the kernel's scratch; the CE's afterwards
    if want_grad:
        a, b = scales
        g_buf = torch.empty(min(n, N), V, dtype=dt, device=dev)  # ∂/∂s of the chunk, compute dtype
        g_mm_buf = g_buf if x.hs.dtype == dt else torch.empty_like(g_buf, dtype=x.hs.dtype)
        gh = torch.empty(N, x.hs.shape[1], dtype=x.hs.dtype, device=dev) if grads[0] else None
        gW = torch.zeros(x.Ws.shape, dtype=dt, device=dev) if grads[1] else None  # accumulated in float32
        gb = torch.zeros(V, dtype=dt, device=dev) if grads[2] else None
    y_safe = labels.clamp(min=0)  # ignored labels (weight 0) read column 0
    for sl, s, t in _logit_chunks(x, n):
        m = s.shape[0]
        if need_agree:
            agree[sl] = s.argmax(-1) == t.argmax(-1)
        if in_place:
            g = g_buf[:m] if want_grad else None
            coefs = ((a * w_kd[sl])[:, None], (b * w_ce[sl])[:, None]) if want_grad else (None, None)
            kl[sl], ce[sl], dtau_c = _forward_kl_ce_in_place(s, t, tau[sl, None], y_safe[sl, None], work[0, :m], g,
                                                             *coefs, need_dtau=need_dtau)
            if need_dtau:
                dtau[sl] = dtau_c
            if want_grad:
                _head_grads(x, sl, g, g_mm_buf, gh, gW, gb)
            continue
        g = g_buf[:m] if want_grad and a != 0 else None
        kl[sl], dtau_c = kernel(s, t, tau[sl, None], work, grad_s=g, need_dtau=need_dtau)
        if need_dtau:
            dtau[sl] = dtau_c
        s32 = s if s.dtype == dt else work[1, :m].copy_(s)
        logz = torch.log_softmax(s32, dim=-1, out=work[0, :m])  # (m, V) log softmax(s), T = 1
        y_c = y_safe[sl, None]
        ce[sl] = -logz.gather(1, y_c).squeeze(1)
        if not want_grad:
            continue
        if g is None:
            g = g_buf[:m].zero_()
        else:
            g.mul_((a * w_kd[sl])[:, None])
        if b != 0:
            coef = (b * w_ce[sl])[:, None]  # (m, 1)
            g.add_(logz.exp_().mul_(coef)).scatter_add_(1, y_c, -coef)
        _head_grads(x, sl, g, g_mm_buf, gh, gW, gb)
    out = (kl, ce, dtau, agree)
    return out + ((gh, gW, gb) if want_grad else (None, None, None))


def _head_grads(x: _Heads, sl: slice, g, g_mm_buf, gh, gW, gb) -> None:
    """From the chunk's ∂/∂s (g): ∂/∂h_s = g·W_s into gh[sl], ∂/∂W_s += gᵀ·h_s, ∂/∂b_s += Σ_tokens g."""
    g_mm = g if g_mm_buf.dtype == g.dtype else g_mm_buf[:g.shape[0]].copy_(g)
    if gh is not None:
        torch.mm(g_mm, x.Ws, out=gh[sl])
    if gW is not None:
        if gW.dtype == g_mm.dtype:
            gW.addmm_(g_mm.T, x.hs[sl])
        else:  # bf16 matmul, float32 accumulation across chunks
            gW.add_(g_mm.T @ x.hs[sl])
    if gb is not None:
        gb.add_(g.sum(0))


def _common_factor(grad_kd: float, grad_ce: float, a: float, b: float) -> float | None:
    """c with (grad_kd, grad_ce) = c·(a, b) (to float32 precision), or None when the backward asks for another blend."""
    c = grad_kd / a if a != 0 else (grad_ce / b if b != 0 else None)
    if c is None:
        return None
    close = lambda u, v: math.isclose(u, v, rel_tol=1e-6, abs_tol=1e-30)
    return c if close(grad_kd, c * a) and close(grad_ce, c * b) else None


class _FusedKDCE(torch.autograd.Function):
    """(kd, ce) from hidden states and heads; gradients for h_s, W_s, b_s and τ (the teacher side is constant).

    The forward computes the gradient of a·kd + b·ce (a, b = kd_weight, ce_weight) chunk by chunk; the backward
    returns it times c when (∂L/∂kd, ∂L/∂ce) = c·(a, b), and otherwise recomputes the logits chunk by chunk for the
    blend it is given. ∂/∂τ_i = ∂L/∂kd · w_i · ∂(τ²KL_i)/∂τ_i, from the kernel, only when τ requires grad.
    """

    @staticmethod
    def forward(ctx, hs, Ws, bs, ht, Wt, bt, tau, labels, w_kd, w_ce, opts):
        x = _Heads(hs, Ws, bs, ht, Wt, bt, opts["dtype"])
        N = hs.shape[0]
        tau_tok = tau.expand(N) if tau.ndim == 0 else tau  # (N,)
        grads = tuple(opts["grad_enabled"] and need for need in ctx.needs_input_grad[:3])
        need_dtau = opts["grad_enabled"] and ctx.needs_input_grad[6]
        scales = (opts["kd_weight"], opts["ce_weight"])
        kl, ce_tok, dtau, _, *eager = _sweep(x, labels, tau_tok, opts["n"], kernel=opts["kernel"],
                                            n_work=opts["n_work"], scales=scales if any(grads) else None,
                                            w_kd=w_kd, w_ce=w_ce, grads=grads, need_dtau=need_dtau,
                                            in_place=opts["in_place"])
        kd = torch.where(w_kd > 0, w_kd * tau_tok**2 * kl, 0.0).sum()  # masked tokens cannot inject NaN
        ce = torch.where(w_ce > 0, w_ce * ce_tok, 0.0).sum()
        ctx.save_for_backward(hs, Ws, bs, ht, Wt, bt, tau, labels, w_kd, w_ce, dtau)
        ctx.opts, ctx.grads, ctx.eager = opts, grads, eager if any(grads) else None
        return kd, ce

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_kd, grad_ce):
        hs, Ws, bs, ht, Wt, bt, tau, labels, w_kd, w_ce, dtau = ctx.saved_tensors
        opts, (gk, gc) = ctx.opts, (float(grad_kd), float(grad_ce))
        grad_h = grad_W = grad_b = grad_tau = None
        if any(ctx.grads):
            c = _common_factor(gk, gc, opts["kd_weight"], opts["ce_weight"]) if ctx.eager is not None else None
            if c is None:  # another blend of kd and ce than the forward's: recompute chunk by chunk
                x = _Heads(hs, Ws, bs, ht, Wt, bt, opts["dtype"])
                tau_tok = tau.expand(hs.shape[0]) if tau.ndim == 0 else tau
                eager, c = _sweep(x, labels, tau_tok, opts["n"], kernel=opts["kernel"], n_work=opts["n_work"],
                                  scales=(gk, gc), w_kd=w_kd, w_ce=w_ce, grads=ctx.grads,
                                  in_place=opts["in_place"])[4:], 1.0
            else:
                eager = ctx.eager
            ctx.eager = None
            grad_h, grad_W, grad_b = (None if g is None else (g if c == 1.0 else g * c) for g in eager)
            grad_W = None if grad_W is None else grad_W.to(Ws.dtype)
            grad_b = None if grad_b is None else grad_b.to(bs.dtype)
        if ctx.needs_input_grad[6]:
            g_tau = torch.where(w_kd > 0, grad_kd * w_kd * dtau, 0.0)  # (N,)
            grad_tau = g_tau.sum() if tau.ndim == 0 else g_tau
        return grad_h, grad_W, grad_b, None, None, None, grad_tau, None, None, None, None


def _tau_and_weights(x: _Heads, tau, labels, mask):
    """τ as () or (N,) in the compute dtype; labels (N,) int64; KD and CE weights (N,) = valid / count."""
    (N, V), dt, dev = x.shape, x.dtype, x.hs.device
    tau = tau_shaped(tau, N, dt, dev)
    if labels.numel() != N:
        raise ValueError(f"labels has {labels.numel()} entries for {N} tokens")
    labels = labels.reshape(N).to(device=dev, dtype=torch.long)
    if mask is not None and mask.numel() != N:
        raise ValueError(f"mask has {mask.numel()} entries for {N} tokens")
    bad_tau = ~(torch.isfinite(tau) & (tau > 0)).all()
    bad_label = (((labels < 0) & (labels != IGNORE_INDEX)) | (labels >= V)).any()
    bad_tau, bad_label = torch.stack([bad_tau, bad_label]).tolist()  # one sync for both checks
    if bad_tau:
        raise ValueError(f"tau must be finite and > 0, got {tau.detach().flatten()[:8].tolist()}")
    if bad_label:
        raise ValueError(f"labels hold ids outside [0, {V}) other than {IGNORE_INDEX}")
    valid_kd = torch.ones(N, dtype=torch.bool, device=dev) if mask is None else mask.reshape(N).to(dev, torch.bool)
    valid_ce = labels != IGNORE_INDEX
    w_kd = valid_kd.to(dt) / valid_kd.sum().clamp(min=1).to(dt)
    w_ce = valid_ce.to(dt) / valid_ce.sum().clamp(min=1).to(dt)
    return tau, labels, w_kd, w_ce


def fused_kd_ce_loss(student_hidden: torch.Tensor, student_head: torch.Tensor, student_bias: torch.Tensor | None,
                     teacher_hidden: torch.Tensor, teacher_head: torch.Tensor, teacher_bias: torch.Tensor | None,
                     labels: torch.Tensor, tau: float | torch.Tensor, mask: torch.Tensor | None = None, *,
                     kd_weight: float = 1.0, ce_weight: float = 1.0, chunk_size: int | None = None,
                     chunk_mb: float = 256.0, divergence: str = "forward_kl", alpha: float = 0.1,
                     beta: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """CTKD's KD loss and the CE, from last hidden states and output heads, without (N, V) logits.

        s = h_s W_sᵀ + b_s,  t = h_t W_tᵀ + b_t                               (N, V), one chunk at a time
        kd = (1/|M|) Σ_{i∈M} τ_i² D(softmax(t_i/τ_i), softmax(s_i/τ_i))     M: mask (all tokens if None)
        ce = (1/|L|) Σ_{i∈L} −log softmax(s_i)[y_i]                           L: labels != -100

    D is ``divergence`` (forward KL by default; as ``kd_loss``: reverse_kl, skew_kl with α, jsd with β). Equal to
    ``kd_loss(s, t, tau, mask, divergence=...)`` and ``F.cross_entropy(s, labels)`` (all labels ignored: ce = 0, not NaN).

    Args:
        student_hidden: (..., H_s) last hidden states (after the final norm), flattened to (N, H_s).
        student_head: (V, H_s) output head weight (the embedding matrix when tied: its grad accumulates once).
        student_bias: (V,) or None.
        teacher_hidden, teacher_head, teacher_bias: (..., H_t), (V, H_t), (V,) or None; constant (no gradient).
        labels: (...) next-token ids, -100 = ignored by the CE.
        tau: float, 0-d / one-element tensor, or one value per token; finite and > 0.
        mask: optional (...) bool / 0-1 tokens the KD averages over.
        kd_weight, ce_weight: the blend the caller backpropagates (loss = kd_weight·kd + ce_weight·ce): its
            gradient is computed in the forward while each chunk is at hand. Any other use stays exact, at the
            cost of a second pass over the chunks in the backward.
        chunk_size: tokens per chunk; default: as many as fit in `chunk_mb` MB of (chunk, V) buffers.
        divergence, alpha, beta: as ``kd_loss``'s.

    Returns:
        (kd, ce): 0-d float32 tensors (float64 for float64 inputs).

    Matmuls run in the inputs' dtype (bf16 under autocast, float32 accumulation of ∂/∂W across chunks); the
    softmaxes in float32. Memory above the inputs: ∂/∂W_s (V, H_s) float32 and the (chunk, V) buffers.
    """
    kernel = divergence_kernel(divergence, alpha, beta)
    x = _heads(student_hidden, student_head, student_bias, teacher_hidden, teacher_head, teacher_bias)
    tau, labels, w_kd, w_ce = _tau_and_weights(x, tau, labels, mask)
    grad_enabled, (in_place, n_work) = torch.is_grad_enabled(), _work_rows(x, divergence)
    opts = {"dtype": x.dtype, "kd_weight": float(kd_weight), "ce_weight": float(ce_weight), "kernel": kernel,
            "n_work": n_work, "in_place": in_place, "grad_enabled": grad_enabled,
            "n": _chunk_tokens(x, chunk_size, chunk_mb, grad_enabled, n_work)}
    return _FusedKDCE.apply(x.hs, x.Ws, x.bs, x.ht, x.Wt, x.bt, tau, labels, w_kd, w_ce, opts)


@torch.no_grad()
def fused_eval_sums(student_hidden, student_head, student_bias, teacher_hidden, teacher_head, teacher_bias,
                    labels, mask=None, *, chunk_size: int | None = None, chunk_mb: float = 256.0) -> dict[str, float]:
    """Held-out sums through the same chunks (no gradient): the numbers behind val/loss, val/ppl, val/kl, top-1.

    Returns {"ce_sum": Σ_{labels != -100} CE, "labels": their count, "kl_sum": Σ_i KL at T = 1 over the tokens of
    `mask` (all tokens if None), "top1_agree": how many of them have argmax s = argmax t, "tokens": their count};
    the same as summing F.cross_entropy, kd_loss at τ = 1 (× tokens) and argmax comparisons over the logits.
    """
    x = _heads(student_hidden, student_head, student_bias, teacher_hidden, teacher_head, teacher_bias)
    tau, labels, _, _ = _tau_and_weights(x, 1.0, labels, None)
    N, (in_place, n_work) = x.shape[0], _work_rows(x, "forward_kl")
    kl, ce, _, agree, *_ = _sweep(x, labels, tau.expand(N), _chunk_tokens(x, chunk_size, chunk_mb, False, n_work),
                                  n_work=n_work, need_agree=True, in_place=in_place)
    valid = labels != IGNORE_INDEX
    chosen = torch.ones(N, dtype=torch.bool, device=kl.device) if mask is None else mask.reshape(N).to(kl.device)
    return {"ce_sum": ce[valid].sum().item(), "labels": int(valid.sum().item()), "kl_sum": kl[chosen].sum().item(),
            "top1_agree": int(agree[chosen].sum().item()), "tokens": int(chosen.sum().item())}


@torch.no_grad()
def fused_token_features(student_hidden, student_head, student_bias, teacher_hidden, teacher_head, teacher_bias, *,
                         chunk_size: int | None = None, chunk_mb: float = 256.0) -> torch.Tensor:
    """(N, 4) float32 per-token temperature features from hidden states: ``ctkd.token_features`` of the logits,
    [H(teacher), H(student), max teacher logit, max student logit], one chunk of logits at a time."""
    x = _heads(student_hidden, student_head, student_bias, teacher_hidden, teacher_head, teacher_bias)
    n = _chunk_tokens(x, chunk_size, chunk_mb, False)
    out = torch.empty(x.shape[0], 4, dtype=torch.float32, device=x.hs.device)
    for sl, s, t in _logit_chunks(x, n):
        out[sl] = token_features(s, t, chunk_size=s.shape[0])
    return out
