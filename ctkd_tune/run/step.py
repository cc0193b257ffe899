"""The step interface: a `Batch` built once, and a `Step` that turns it into a loss (training) or metrics (held out).

    path = LogitsStep(cfg, student, temperature, align, teacher, autocast)   # or fused_step.FusedStep
    out = path.loss(batch, lam)              # StepResult(loss, kd, ce, tau): what the loop backpropagates and logs
    metrics = path.evaluate(held_out)        # val/loss, val/ppl, val/kl, val/top1_agreement

Two implementations with one contract (both give the same numbers, tested): `LogitsStep` here, on the models'
(B, T, V) logits, and `fused_step.FusedStep`, on their last hidden states with the heads applied chunk by chunk.
`distill` builds one of them once per run (`loop.make_step`) and calls only these two methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ctkd_tune.config import Config
from ctkd_tune.core.losses import kd_loss
from ctkd_tune.core.temperature import Temperature
from ctkd_tune.inputs.instruct import IGNORE_INDEX
from ctkd_tune.run.evaluation import held_out_metrics
from ctkd_tune.run.teacher_states import TeacherSource


@dataclass(frozen=True)
class Batch:
    """One batch on the run's device, with the tokens its losses and metrics count, built once where it is cut."""
    index: int  # 0-based training step, or the position of a held-out batch: where the teacher's outputs are kept
    x: torch.Tensor  # (B, T) input ids
    y: torch.Tensor  # (B, T) labels: x shifted by one token; IGNORE_INDEX where no loss looks (prompt, padding)
    attention_mask: torch.Tensor | None  # (B, T), instruction data only; None for text (causal attention alone)
    counted: torch.Tensor  # (B, T) bool: the tokens every loss and metric averages over (y != IGNORE_INDEX)

    @classmethod
    def on(cls, device: torch.device, index: int, x: torch.Tensor, y: torch.Tensor,
           attention_mask: torch.Tensor | None = None) -> Batch:
        """The batch (x, y, attention mask) moved to `device`, its counted tokens derived from the labels."""
        x, y = x.to(device), y.to(device)
        mask = None if attention_mask is None else attention_mask.to(device)
        return cls(index, x, y, mask, counted=y != IGNORE_INDEX)

    @property
    def loss_mask(self) -> torch.Tensor | None:
        """`counted` for instruction data; None for text, where every token counts (the losses' unmasked path)."""
        return None if self.attention_mask is None else self.counted


@dataclass(frozen=True)
class StepResult:
    """One training step's loss and its parts, each a mean over the batch's counted tokens."""
    loss: torch.Tensor  # () what is backpropagated: kd_weight · kd + ce_weight · ce (+ align_weight · alignment)
    kd: torch.Tensor  # () τ²·D(teacher ‖ student at τ), D = loss.divergence
    ce: torch.Tensor  # () cross-entropy of the student on the labels
    tau: torch.Tensor  # () global τ, or (counted tokens,) per-token τ


class Step(Protocol):
    """One path from a batch to its loss and to held-out metrics; it holds the models, τ and the config."""

    def loss(self, batch: Batch, lam: float) -> StepResult:
        """Teacher outputs → student forward → τ (GRL strength `lam`) → loss on a training batch."""

    def evaluate(self, batches: list[Batch], with_teacher: bool = False) -> dict[str, float]:
        """Held-out perplexity, KL to the teacher at T = 1 and top-1 agreement over the counted tokens;
        with_teacher adds the teacher's own perplexity as "teacher/ppl"."""


def align_loss(align: nn.Module, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
    """MSE(align(student hidden), teacher hidden): hidden states (B, T, H_s) and (B, T, H_t), squared error averaged
    over H_t, then over the counted tokens (`mask` (B, T); all tokens if None)."""
    diff = (align(student_hidden.float()) - teacher_hidden.float()).pow(2).mean(-1)  # (B, T)
    return diff.mean() if mask is None else diff[mask].mean()


def counted_tau(tau: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """τ as logged: the global value, or the per-token values (B*T,) of the counted tokens only."""
    return tau if tau.dim() == 0 or mask is None else tau[mask.flatten()]


def counted_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, tau: torch.Tensor,
                   mask: torch.Tensor | None, chunk_size: int, **divergence) -> tuple[torch.Tensor, torch.Tensor]:
    """(KD, CE), each a mean over the counted tokens: all of them (mask None, text) or where `mask` (B, T) is True
    (instruction data: the response tokens; y is IGNORE_INDEX elsewhere). Logits (B, T, V), y (B, T);
    `divergence` (divergence=, alpha=, beta=) goes to `kd_loss`."""
    kd = kd_loss(student_logits, teacher_logits, tau, mask=mask, chunk_size=chunk_size, **divergence)
    ce = F.cross_entropy(student_logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX)
    return kd, ce


class LogitsStep:
    """The logits path: both models' (B, T, V) logits, the KD loss chunked over tokens (`loss.chunk_size`)."""

    def __init__(self, cfg: Config, student: nn.Module, temperature: Temperature, align: nn.Module | None,
                 teacher: TeacherSource, autocast: Callable[[], Any]):
        self.cfg, self.student, self.temperature, self.align = cfg, student, temperature, align
        self.teacher, self.autocast = teacher, autocast

    def loss(self, batch: Batch, lam: float) -> StepResult:
        """Forward → τ → loss on a training batch:

            loss = kd_weight · τ²·D(teacher ‖ student at τ) + ce_weight · CE(student, y)   (D: loss.divergence)
                   + align_weight · MSE(align(student hidden), teacher hidden)
        each a mean over the counted tokens (every token of text; the response tokens of instruction data).
        """
        lo, mask = self.cfg.loss, batch.loss_mask
        with self.autocast():
            teacher_out = self.teacher.train(batch.index, batch.x, batch.attention_mask)  # logits (B, T, V)
            student_out = self.student(batch.x, attention_mask=batch.attention_mask,
                                       output_hidden_states=self.align is not None)
        tau = self.temperature(batch.index, lam, student_out.logits, teacher_out.logits)  # () or (B*T,)
        kd, ce = counted_losses(student_out.logits, teacher_out.logits, batch.y, tau, mask, lo.chunk_size,
                                divergence=lo.divergence, alpha=lo.skew_alpha, beta=lo.jsd_beta)
        loss = lo.kd_weight * kd + lo.ce_weight * ce
        if self.align is not None:
            hidden = align_loss(self.align, student_out.hidden_states[-1], teacher_out.hidden, mask)
            loss = loss + lo.align_weight * hidden
        return StepResult(loss, kd, ce, counted_tau(tau, mask))

    @torch.no_grad()
    def evaluate(self, batches: list[Batch], with_teacher: bool = False) -> dict[str, float]:
        """Held-out student perplexity, KL to the teacher at T = 1, and top-1 agreement with the teacher, over the
        counted tokens; with_teacher adds the teacher's own perplexity on those tokens as "teacher/ppl"."""
        self.student.eval()
        ce_sum = teacher_ce_sum = kl_sum = agree = count = 0.0
        for batch in batches:
            y, mask = batch.y, batch.counted  # (B, T) each
            with self.autocast():
                teacher_logits = self.teacher.held_out(batch.index, batch.x, batch.attention_mask).logits  # (B, T, V)
                student_logits = self.student(batch.x, attention_mask=batch.attention_mask).logits  # (B, T, V)
            n = mask.sum().item()
            ce_sum += F.cross_entropy(student_logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX,
                                      reduction="sum").item()
            if with_teacher:
                teacher_ce_sum += F.cross_entropy(teacher_logits.flatten(0, 1).float(), y.flatten(),
                                                  ignore_index=IGNORE_INDEX, reduction="sum").item()
            kl_sum += kd_loss(student_logits, teacher_logits, 1.0, mask=mask,
                              chunk_size=self.cfg.loss.chunk_size).item() * n
            agree += ((student_logits.argmax(-1) == teacher_logits.argmax(-1)) & mask).sum().item()
            count += n
        self.student.train()
        return held_out_metrics(ce_sum, kl_sum, agree, count, teacher_ce_sum if with_teacher else None)
