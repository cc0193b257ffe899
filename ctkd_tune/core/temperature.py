"""The distillation temperature for one step, in every mode the config can ask for.

    mode       what τ is                                               gradient into τ
    ctkd       learned, bounded; λ from the schedule                   reversed: τ *maximises* the KD loss (× λ)
    learnable  learned, bounded                                        plain: τ minimises the KD loss (ablation)
    fixed      `fixed_value` (fallback A, 2.0)                         none
    anneal     `anneal_start` → `anneal_end` linearly (fallback B)     none

Granularity `global` is one scalar τ (`CTKDTemperature`); `token` predicts one τ per token from detached per-token
features (`CTKDTemperaturePredictor`). The learned parameters get their own optimiser with no weight decay. Its
default is SGD because Adam normalises the update by the gradient's running RMS: with grad = λ·g the step size no
longer depends on λ, and the λ curriculum collapses to a sign switch (docs/design.md, "Why SGD for the temperature").
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ctkd_tune.config import TemperatureConfig
from ctkd_tune.core.ctkd import CTKDTemperature, CTKDTemperaturePredictor, token_features

NUM_TOKEN_FEATURES = 4  # teacher entropy, student entropy, teacher max logit, student max logit


# The temperatures nobody learns: mode → τ at progress p ∈ [0, 1] of the run.
SET: dict[str, Callable[[TemperatureConfig, float], float]] = {
    "fixed": lambda cfg, p: cfg.fixed_value,  # fallback A
    "anneal": lambda cfg, p: cfg.anneal_start + (cfg.anneal_end - cfg.anneal_start) * p,  # fallback B
}

# The learned ones: granularity → the module holding τ's parameters.
LEARNED: dict[str, Callable[[TemperatureConfig], nn.Module]] = {
    "global": lambda cfg: CTKDTemperature(cfg.tau_min, cfg.tau_max, cfg.tau_init),
    "token": lambda cfg: CTKDTemperaturePredictor(NUM_TOKEN_FEATURES, cfg.tau_min, cfg.tau_max,
                                                  hidden_dim=cfg.hidden_dim, init=cfg.tau_init),
}
# SET's keys and config.LEARNED_MODES are config.TEMPERATURE_MODES; LEARNED's are config.GRANULARITIES (tested).


class Temperature(nn.Module):
    """τ(step, λ) for the configured mode; `optimizer()` returns the optimiser of its parameters (or None)."""

    def __init__(self, cfg: TemperatureConfig, total_steps: int):
        super().__init__()
        self.cfg, self.total_steps = cfg, total_steps
        self.module: nn.Module | None = None
        if cfg.learned:
            self.module = LEARNED[cfg.granularity](cfg)

    def forward(self, step: int, lambda_: float, student_logits: torch.Tensor | None = None,
                teacher_logits: torch.Tensor | None = None, *,
                features: Callable[[], torch.Tensor] | None = None, device: torch.device | None = None) -> torch.Tensor:
        """τ as a 0-d float32 tensor (global) or one value per token, shape (B*T,) (token).

        The per-token features come from the logits, or from `features()` when given (the fused path computes them
        from hidden states); either is evaluated only for granularity `token`.
        """
        cfg = self.cfg
        if not cfg.learned:
            device = student_logits.device if device is None else device
            return torch.tensor(SET[cfg.mode](cfg, step / max(1, self.total_steps - 1)), device=device)
        # learnable = the same module with λ = -1: the GRL's backward -λ·grad is then +grad, plain minimisation.
        grl_lambda = lambda_ if cfg.adversarial else -1.0
        if cfg.granularity == "global":
            return self.module(grl_lambda)
        if features is None:
            features = lambda: token_features(student_logits, teacher_logits)
        return self.module(features(), grl_lambda)  # features: (B*T, 4), computed without grad

    def optimizer(self) -> torch.optim.Optimizer | None:
        if self.module is None:
            return None
        params = list(self.module.parameters())
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.cfg.lr, momentum=0.0, weight_decay=0.0)
        return torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=0.0)


def temperature_stats(tau: torch.Tensor) -> dict[str, float]:
    """Detached summary of τ for logging: the value, or mean/min/max for per-token τ."""
    tau = tau.detach().float()
    if tau.dim() == 0:
        value = tau.item()
        return {"ctkd/temperature": value, "ctkd/temperature_min": value, "ctkd/temperature_max": value}
    return {"ctkd/temperature": tau.mean().item(), "ctkd/temperature_min": tau.min().item(),
            "ctkd/temperature_max": tau.max().item()}
