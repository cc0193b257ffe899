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
- λ schedules (``LAMBDA_SCHEDULES``: name → shape, ``lambda_at(cfg.schedule, step, total)``): cosine, exp
  (DANN), linear, constant.

The loss itself (``kd_loss``: τ²·D for the configured divergence D, chunked with an analytic backward) lives in
``ctkd_tune.core.losses``.
"""

import math
from typing import Callable

import torch
import torch.nn as nn

from ctkd_tune.config import ScheduleConfig


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
    ``token_features`` builds f with input_dim = 4; the features are raw (entropies in nats, logits), so keep
    their scale in mind when choosing the lr.
    """

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
# p = 1 there. A schedule is only its shape: p ↦ λ/λ_max, from [0, 1] onto [0, 1], given the ScheduleConfig.

def _cosine(p: float, schedule: ScheduleConfig) -> float:
    """(1 − cos(π p)) / 2: slow start, slow finish."""
    return (1.0 - math.cos(math.pi * p)) / 2.0


def _exp(p: float, schedule: ScheduleConfig) -> float:
    """DANN's 2/(1 + e^(−γp)) − 1, normalised to end at 1 (unnormalised it ends at 0.99991 for γ = 10).

    Rises fast early: at γ = 10 it is already 0.76 at p = 0.2.
    """
    if not schedule.gamma > 0:
        raise ValueError(f"gamma must be > 0, got {schedule.gamma}")
    dann = lambda x: 2.0 / (1.0 + math.exp(-schedule.gamma * x)) - 1.0
    return dann(p) / dann(1.0)


def _linear(p: float, schedule: ScheduleConfig) -> float:
    """p."""
    return p


def _constant(p: float, schedule: ScheduleConfig) -> float:
    """1 right after warmup: a step function."""
    return 1.0


LAMBDA_SCHEDULES: dict[str, Callable[[float, ScheduleConfig], float]] = {
    "cosine": _cosine,
    "exp": _exp,
    "linear": _linear,
    "constant": _constant,
}  # the keys are config.SCHEDULE_TYPES (a contract test checks it)


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


def lambda_at(schedule: ScheduleConfig, step: int, total_steps: int) -> float:
    """λ at 0-based ``step`` of ``total_steps``: 0 during warmup, then λ_max · shape(p) for the named schedule."""
    shape = LAMBDA_SCHEDULES.get(schedule.type)
    if shape is None:
        raise ValueError(f"unknown lambda schedule {schedule.type!r}; valid names: {sorted(LAMBDA_SCHEDULES)}")
    p = _progress(step, total_steps, schedule.lambda_max, schedule.warmup_ratio)
    return 0.0 if p is None else min(schedule.lambda_max, schedule.lambda_max * shape(p, schedule))


def get_lambda(step: int, total_steps: int, lambda_max: float = 1.0, warmup_ratio: float = 0.2) -> float:
    """The plan's default curriculum, cosine: λ = λ_max · (1 − cos(π p)) / 2 (0 during warmup)."""
    return lambda_at(ScheduleConfig("cosine", lambda_max, warmup_ratio), step, total_steps)


def get_lambda_exp(step: int, total_steps: int, gamma: float = 10.0, lambda_max: float = 1.0,
                   warmup_ratio: float = 0.0) -> float:
    """The DANN curriculum: λ = λ_max · (2/(1 + e^(−γp)) − 1) / (2/(1 + e^(−γ)) − 1) (0 during warmup)."""
    return lambda_at(ScheduleConfig("exp", lambda_max, warmup_ratio, gamma), step, total_steps)
