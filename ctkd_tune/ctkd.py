"""Curriculum Temperature Knowledge Distillation (CTKD) for causal LMs.

CTKD (Li et al., AAAI 2023, arXiv 2211.16231) learns the distillation temperature τ adversarially:
the student minimises the KD loss, the temperature *maximises* it through a gradient reversal layer
(GRL) whose strength λ follows a curriculum (0 → λ_max), so the task starts easy and gets harder.

    student:      θ_s ← θ_s − lr · ∂L_kd/∂θ_s
    temperature:  θ_τ ← θ_τ − lr · (−λ · ∂L_kd/∂θ_τ)        (the GRL flips and scales the gradient)

This module holds the pieces as small named objects:

- ``GradientReversalFunction`` / ``GradientReversalLayer``: identity forward, −λ·grad backward.
- ``CTKDTemperature``: one global learnable τ ∈ (tau_min, tau_max) through a sigmoid.
- ``CTKDTemperaturePredictor`` + ``token_features``: one τ per token from detached, compact features.
- λ schedules (``LAMBDA_SCHEDULES``, ``lambda_at``): cosine, exp (DANN), linear, constant.
- ``kd_loss``: τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), chunked over tokens with an analytic backward, and
  ``kd_loss_reference``, the naive unchunked version it is tested against.
"""

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


# -----------------------------------------------------------------------------
# Gradient reversal

class GradientReversalFunction(torch.autograd.Function):
    """Identity forward, reversed and scaled gradient backward.

        forward:  y = x                   (returned as a float32 copy, so autocast cannot change its dtype)
        backward: ∂L/∂x = −λ · ∂L/∂y      (λ is a plain Python float and gets no gradient)

    λ = 0 blocks the gradient (warmup: the temperature does not move), λ > 0 makes x *ascend* L,
    λ = −1 passes the gradient unchanged (plain minimisation, used by the "learnable" ablation).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = float(lambda_)
        ctx.input_dtype = x.dtype
        return x.float().clone()  # .float() alone returns x itself for float32 input

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return (-ctx.lambda_ * grad_output).to(ctx.input_dtype), None


class GradientReversalLayer(nn.Module):
    """Module wrapper around ``GradientReversalFunction`` holding the current λ (set it every step)."""

    def __init__(self, lambda_: float = 0.0):
        super().__init__()
        self.lambda_ = float(lambda_)

    def set_lambda(self, lambda_: float) -> None:
        self.lambda_ = float(lambda_)

    def forward(self, x: torch.Tensor, lambda_: float | None = None) -> torch.Tensor:
        """Apply the GRL with ``lambda_`` if given, else with the stored λ."""
        return GradientReversalFunction.apply(x, self.lambda_ if lambda_ is None else float(lambda_))

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}"


# -----------------------------------------------------------------------------
# Learnable temperatures

def _raw_init(tau_min: float, tau_max: float, init: float) -> float:
    """Validate the bounds and return logit((init − tau_min) / (tau_max − tau_min))."""
    if not tau_min > 0:
        raise ValueError(f"tau_min must be > 0, got tau_min={tau_min}")
    if not tau_max > tau_min:
        raise ValueError(f"tau_max must be > tau_min, got tau_min={tau_min}, tau_max={tau_max}")
    if not tau_min < init < tau_max:
        raise ValueError(f"init must lie strictly inside (tau_min, tau_max) = ({tau_min}, {tau_max}), got init={init}")
    u = (init - tau_min) / (tau_max - tau_min)
    return math.log(u / (1.0 - u))


class CTKDTemperature(nn.Module):
    """Global learnable temperature, bounded by a sigmoid:

        τ = tau_min + (tau_max − tau_min) · σ(GRL_λ(raw_temp))      (a 0-d float32 tensor)

    ``raw_temp`` is one 0-d float32 parameter, initialised so that τ = init. Call ``forward(λ)`` with the
    curriculum's λ ≥ 0 (adversarial CTKD); the "learnable" ablation passes λ = −1, which makes the GRL an
    identity for gradients, so τ simply minimises the KD loss. Keep ``raw_temp`` in its own optimizer
    param group with weight_decay = 0 (Adam's scale invariance cancels the λ curriculum: prefer SGD).
    """

    def __init__(self, tau_min: float = 1.0, tau_max: float = 5.0, init: float = 2.0):
        super().__init__()
        self.tau_min, self.tau_max = float(tau_min), float(tau_max)
        self.raw_temp = nn.Parameter(torch.tensor(_raw_init(tau_min, tau_max, init), dtype=torch.float32))
        self.grl = GradientReversalLayer()

    def forward(self, lambda_: float) -> torch.Tensor:
        return self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(self.grl(self.raw_temp, lambda_))

    @torch.no_grad()
    def get_temperature(self) -> float:
        """Current τ as a Python float (no GRL, no graph), for logging."""
        return self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(self.raw_temp.float()).item()

    def extra_repr(self) -> str:
        return f"tau_min={self.tau_min}, tau_max={self.tau_max}"


@torch.no_grad()
def token_features(student_logits: torch.Tensor, teacher_logits: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Compact per-token features for ``CTKDTemperaturePredictor``, computed without grad, chunk by chunk.

    Args:
        student_logits, teacher_logits: (..., V) logits of any float dtype; flattened to (N, V).
        chunk_size: tokens per chunk (a few float32 (chunk_size, V) temporaries at a time).

    Returns:
        (N, 4) float32: [H(teacher), H(student), max teacher logit, max student logit], entropies at T = 1
        in nats (H = −Σ_v p_v log p_v, in [0, log V]).
    """
    V = student_logits.shape[-1]
    s, t = student_logits.reshape(-1, V), teacher_logits.reshape(-1, V)
    out = torch.empty(s.shape[0], 4, dtype=torch.float32, device=s.device)
    for i in range(0, s.shape[0], chunk_size):
        for col, x in ((0, t[i:i + chunk_size]), (1, s[i:i + chunk_size])):
            x = x.float()
            logp = torch.log_softmax(x, dim=-1)  # (n, V)
            out[i:i + chunk_size, col] = -logp.exp().mul_(logp).sum(-1)
            out[i:i + chunk_size, col + 2] = x.amax(dim=-1)
    return out


class CTKDTemperaturePredictor(nn.Module):
    """Instance-wise CTKD for causal LMs: one temperature per token.

        τ_i = tau_min + (tau_max − tau_min) · σ(GRL_λ(MLP(f_i)))       f: (N, input_dim) → τ: (N,) float32

    MLP = Linear(input_dim, hidden_dim) → ReLU → Linear(hidden_dim, 1). The features are detached here, so the
    reversed gradient reaches only the MLP, never the student. The last layer starts at weight 0 and
    bias logit((init − tau_min)/(tau_max − tau_min)): every token starts at τ = init, like ``CTKDTemperature``.
    ``token_features`` (also ``CTKDTemperaturePredictor.token_features``) builds f with input_dim = 4; the
    features are raw (entropies in nats, logits), so keep their scale in mind when choosing the lr.
    """

    token_features = staticmethod(token_features)

    def __init__(self, input_dim: int, tau_min: float = 1.0, tau_max: float = 5.0, hidden_dim: int = 64,
                 init: float = 2.0):
        super().__init__()
        self.tau_min, self.tau_max = float(tau_min), float(tau_max)
        raw = _raw_init(tau_min, tau_max, init)
        self.mlp = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.constant_(self.mlp[-1].bias, raw)
        self.grl = GradientReversalLayer()

    def forward(self, features: torch.Tensor, lambda_: float) -> torch.Tensor:
        raw = self.mlp(features.detach().float()).squeeze(-1)  # (N,)
        return self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(self.grl(raw, lambda_))

    def extra_repr(self) -> str:
        return f"tau_min={self.tau_min}, tau_max={self.tau_max}"


# -----------------------------------------------------------------------------
# λ curriculum. Every schedule: λ = 0 for step < warmup_steps = int(warmup_ratio · total_steps), then rises
# with the progress p = (step − warmup_steps) / (total_steps − 1 − warmup_steps) ∈ [0, 1] (clamped) to
# exactly λ_max at the last step, step = total_steps − 1. When the last step is the first one after warmup,
# p = 1 there.

def _progress(step: int, total_steps: int, lambda_max: float, warmup_ratio: float) -> float | None:
    """Validate the arguments; return None during warmup, else the progress p ∈ [0, 1]."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    if not lambda_max >= 0.0:
        raise ValueError(f"lambda_max must be >= 0, got {lambda_max}")
    warmup_steps = int(warmup_ratio * total_steps)
    if step < warmup_steps:
        return None
    span = total_steps - 1 - warmup_steps
    return min(max((step - warmup_steps) / span, 0.0), 1.0) if span > 0 else 1.0


def get_lambda(step: int, total_steps: int, lambda_max: float = 1.0, warmup_ratio: float = 0.2) -> float:
    """Cosine rise: λ = λ_max · (1 − cos(π p)) / 2 (0 during warmup)."""
    p = _progress(step, total_steps, lambda_max, warmup_ratio)
    return 0.0 if p is None else min(lambda_max, lambda_max * (1.0 - math.cos(math.pi * p)) / 2.0)


def get_lambda_exp(step: int, total_steps: int, gamma: float = 10.0, lambda_max: float = 1.0,
                   warmup_ratio: float = 0.0) -> float:
    """DANN schedule, normalised to end at λ_max:

        λ = λ_max · (2/(1 + e^(−γp)) − 1) / (2/(1 + e^(−γ)) − 1)

    Without the normalisation it would end at 0.99991·λ_max for γ = 10. Rises fast early: at γ = 10,
    λ = 0.76·λ_max already at p = 0.2.
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    p = _progress(step, total_steps, lambda_max, warmup_ratio)
    if p is None:
        return 0.0
    dann = lambda x: 2.0 / (1.0 + math.exp(-gamma * x)) - 1.0
    return min(lambda_max, lambda_max * dann(p) / dann(1.0))


def get_lambda_linear(step: int, total_steps: int, lambda_max: float = 1.0, warmup_ratio: float = 0.2) -> float:
    """Linear rise: λ = λ_max · p (0 during warmup)."""
    p = _progress(step, total_steps, lambda_max, warmup_ratio)
    return 0.0 if p is None else lambda_max * p


def get_lambda_constant(step: int, total_steps: int, lambda_max: float = 1.0, warmup_ratio: float = 0.0) -> float:
    """Step function: λ = λ_max after warmup (0 during warmup)."""
    p = _progress(step, total_steps, lambda_max, warmup_ratio)
    return 0.0 if p is None else lambda_max


LAMBDA_SCHEDULES: dict[str, Callable[..., float]] = {
    "cosine": get_lambda,
    "exp": get_lambda_exp,
    "linear": get_lambda_linear,
    "constant": get_lambda_constant,
}


def lambda_at(schedule: str, step: int, total_steps: int, lambda_max: float, warmup_ratio: float,
              gamma: float = 10.0) -> float:
    """λ at ``step`` for the schedule named ``schedule`` (a key of LAMBDA_SCHEDULES); gamma is used by "exp" only."""
    if schedule not in LAMBDA_SCHEDULES:
        raise ValueError(f"unknown lambda schedule {schedule!r}; valid names: {sorted(LAMBDA_SCHEDULES)}")
    extra = {"gamma": gamma} if schedule == "exp" else {}
    return LAMBDA_SCHEDULES[schedule](step, total_steps, lambda_max=lambda_max, warmup_ratio=warmup_ratio, **extra)


# -----------------------------------------------------------------------------
# KD loss: τ² · KL(softmax(t/τ) ‖ softmax(s/τ)), mean over valid tokens

def _softmax_(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, in place."""
    x.sub_(x.amax(dim=-1, keepdim=True)).exp_()
    return x.div_(x.sum(dim=-1, keepdim=True))


def _kd_chunk(s, t, tau, work, need_dtau):
    """Per-token KL(p ‖ q) and, if asked, ∂(τ²·KL)/∂τ for one chunk, inside the 3 buffers ``work``.

    s, t: (n, V) logits; tau: (n, 1); work: (3, ≥n, V) float32 scratch, reused from chunk to chunk (fresh
    allocations page-fault, and that dominates on CPU). With log q = log_softmax(s/τ), log p = log_softmax(t/τ)
    and d = log p − log q:
        KL   = E_p[d]
        ∂/∂τ = τ · (2·KL − (E_q[log q] − E_p[log q]) − Cov_p(log p, d))
             = τ · (KL − E_q[log q] + E_p[log p] − (E_p[d · log p] − E_p[log p] · KL))
    The sums use torch's (pairwise) sum: a matmul-based row dot loses ~1e-3 of the τ-gradient in float32.
    """
    logp, logq, tmp = work[:, :s.shape[0]]  # (n, V) each
    torch.log_softmax(torch.div(t, tau, out=tmp), dim=-1, out=logp)
    torch.log_softmax(torch.div(s, tau, out=tmp), dim=-1, out=logq)
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


class _ChunkedKD(torch.autograd.Function):
    """Σ_i w_i · τ_i² · KL_i over (N, V) logits, chunked over tokens, with an analytic backward.

    The forward keeps only (N,) vectors; the backward recomputes the softmaxes chunk by chunk and writes
    straight into the gradient. Gradients, for a token with weight w (q = softmax(s/τ), p = softmax(t/τ)):
        ∂/∂s = w · τ · (q − p)
        ∂/∂t = w · τ · p ⊙ (log p − log q − KL)
        ∂/∂τ = w · τ · (2·KL − (E_q[log q] − E_p[log q]) − Cov_p(log p, log p − log q))
    The τ formula follows from homogeneity: L(cs, ct, cτ) = c²·L(s, t, τ), so
    τ·∂L/∂τ = 2L − ⟨s, ∂L/∂s⟩ − ⟨t, ∂L/∂t⟩.
    Scratch memory: 3 (chunk_size, V) buffers in the forward, 1 in the backward (2 for non-float32 logits).
    """

    @staticmethod
    def forward(ctx, s, t, tau, weights, chunk_size, grad_enabled):
        # s, t: (N, V); tau: () or (N,); weights: (N,), 0 for masked tokens
        (N, V), dtype, cs = s.shape, weights.dtype, chunk_size
        tau_tok = tau.expand(N) if tau.ndim == 0 else tau  # (N,)
        need_dtau = grad_enabled and ctx.needs_input_grad[2]
        kl = torch.empty(N, dtype=dtype, device=s.device)
        dtau = torch.empty_like(kl) if need_dtau else None
        work = torch.empty(3, min(cs, N), V, dtype=dtype, device=s.device)
        for i in range(0, N, cs):
            kl_c, dtau_c = _kd_chunk(s[i:i + cs], t[i:i + cs], tau_tok[i:i + cs, None], work, need_dtau)
            kl[i:i + cs] = kl_c
            if need_dtau:
                dtau[i:i + cs] = dtau_c
        del work
        loss = torch.where(weights > 0, weights * tau_tok**2 * kl, 0.0).sum()  # masked tokens cannot inject NaN
        ctx.save_for_backward(s, t, tau, weights, kl, dtau)
        ctx.chunk_size = cs
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        s, t, tau, weights, kl, dtau = ctx.saved_tensors
        (N, V), dtype, cs = s.shape, weights.dtype, ctx.chunk_size
        tau_tok = tau.expand(N) if tau.ndim == 0 else tau  # (N,)
        coef = grad_loss * weights  # (N,) ∂loss/∂L_i
        grad_s = grad_t = grad_tau = None
        if ctx.needs_input_grad[0]:
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
        return grad_s, grad_t, grad_tau, None, None, None


def _prepare(student_logits, teacher_logits, tau, mask):
    """Flatten to (N, V) and build per-token τ () or (N,) and weights (N,) = mask / n_valid."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
                         f"{tuple(teacher_logits.shape)} (a vocabulary mismatch means the tokenizers differ)")
    V = student_logits.shape[-1]
    s, t = student_logits.reshape(-1, V), teacher_logits.reshape(-1, V)  # (N, V); a copy if not contiguous
    N, device = s.shape[0], s.device
    dtype = torch.promote_types(s.dtype, torch.float32)  # float32, or float64 for float64 inputs
    if not torch.is_tensor(tau):
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        tau = torch.tensor(float(tau), dtype=dtype, device=device)
    elif tau.numel() == 1:
        tau = tau.to(dtype).reshape(())
    elif tau.numel() == N:
        tau = tau.to(dtype).reshape(N)
    else:
        raise ValueError(f"tau must be a scalar or hold one value per token ({N}), got shape {tuple(tau.shape)}")
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
            mask: torch.Tensor | None = None, chunk_size: int = 1024) -> torch.Tensor:
    """CTKD distillation loss, memory-lean: mean over valid tokens of τ² · KL(softmax(t/τ) ‖ softmax(s/τ)).

        loss = (1/|M|) Σ_{i∈M} τ_i² Σ_v p_iv (log p_iv − log q_iv),   p = softmax(t/τ), q = softmax(s/τ)

    with M the valid tokens (mask == 1 / True; all tokens if mask is None). This is the true KL (it includes
    Σ p log p), so ∂/∂τ is unbiased; τ² is not detached and the teacher's softmax depends on τ, so the
    gradient w.r.t. τ flows through both. All tokens masked → exactly 0, with zero gradients.

    Args:
        student_logits: (..., V), any float dtype (bf16 is upcast chunk by chunk); flattened to (N, V).
        teacher_logits: (..., V), same shape; usually from a no_grad forward (its gradient is supported too).
        tau: float, 0-d / one-element tensor, or one value per token ((N,) or the leading shape).
        mask: optional (...) bool / 0-1 tensor with the logits' leading shape.
        chunk_size: tokens per chunk.

    Returns:
        0-d float32 tensor (float64 for float64 inputs).

    Memory: the forward keeps only (N,) vectors and the backward recomputes the softmaxes per chunk, so above
    the inputs it needs the gradient (N, V) plus at most 3 float32 (chunk_size, V) scratch buffers. Pass contiguous
    logits: reshaping a non-contiguous slice (e.g. logits[:, :-1]) copies it.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    s, t, tau, weights = _prepare(student_logits, teacher_logits, tau, mask)
    return _ChunkedKD.apply(s, t, tau, weights, chunk_size, torch.is_grad_enabled())


def kd_loss_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float | torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Naive unchunked ``kd_loss`` (same formula, arguments and reduction), for tests and benchmarks.

    Materialises several (N, V) float32 tensors; with a scalar τ and no mask it equals
    F.kl_div(F.log_softmax(s/τ, -1), F.log_softmax(t/τ, -1), reduction="batchmean", log_target=True) · τ².
    """
    s, t, tau, weights = _prepare(student_logits, teacher_logits, tau, mask)
    dtype = weights.dtype
    tau_col = tau.reshape(-1, 1)  # (1, 1) or (N, 1)
    log_q = F.log_softmax(s.to(dtype) / tau_col, dim=-1)  # (N, V)
    log_p = F.log_softmax(t.to(dtype) / tau_col, dim=-1)  # (N, V)
    kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)  # (N,)
    return (weights * tau_col.squeeze(1) ** 2 * kl).sum()
