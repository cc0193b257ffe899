"""Held-out evaluation: the student's perplexity, its KL to the teacher at T = 1 and their top-1 agreement.

`evaluate` is the logits path; `fused_step.evaluate` computes the same sums chunk by chunk from hidden states.
Both end in `held_out_metrics`, so the two paths report the same keys from the same formulas.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ctkd_tune.inputs.instruct import IGNORE_INDEX
from ctkd_tune.core.losses import kd_loss
from ctkd_tune.run.teacher_states import TeacherOutputs

MAX_LOSS = 700.0  # exp(700) ≈ 1e304, near float64's largest: a validation loss beyond it counts as divergence


def held_out_metrics(ce_sum: float, kl_sum: float, agree: float, count: float,
                     teacher_ce_sum: float | None = None) -> dict[str, float]:
    """Sums over the counted held-out tokens → means: val/loss (CE), val/ppl = exp(CE), val/kl, top-1 agreement;
    "teacher/ppl" too when the teacher's own CE sum is given."""
    ce = ce_sum / count
    metrics = {"val/loss": ce, "val/ppl": math.exp(min(ce, MAX_LOSS)), "val/kl": kl_sum / count,
               "val/top1_agreement": agree / count}
    if teacher_ce_sum is not None:
        metrics["teacher/ppl"] = math.exp(min(teacher_ce_sum / count, MAX_LOSS))
    return metrics


@torch.no_grad()
def evaluate(student: nn.Module, teacher: TeacherOutputs, batches: list[tuple[torch.Tensor, ...]],
             chunk_size: int, autocast, with_teacher: bool = False) -> dict[str, float]:
    """Held-out student perplexity, KL to the teacher at T = 1, and top-1 agreement with the teacher, over the
    tokens the loss counts (every token of text; the response tokens of instruction data); with_teacher adds the
    teacher's own perplexity on those tokens as "teacher/ppl"."""
    student.eval()
    ce_sum = teacher_ce_sum = kl_sum = agree = count = 0.0
    for i, (x, y, attention_mask) in enumerate(batches):
        with autocast():
            teacher_logits = teacher.held_out(i, x, attention_mask).logits  # (B, T, V)
            student_logits = student(x, attention_mask=attention_mask).logits  # (B, T, V)
        mask = y != IGNORE_INDEX  # (B, T)
        n = mask.sum().item()
        ce_sum += F.cross_entropy(student_logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX,
                                  reduction="sum").item()
        if with_teacher:
            teacher_ce_sum += F.cross_entropy(teacher_logits.flatten(0, 1).float(), y.flatten(),
                                              ignore_index=IGNORE_INDEX, reduction="sum").item()
        kl_sum += kd_loss(student_logits, teacher_logits, 1.0, mask=mask, chunk_size=chunk_size).item() * n
        agree += ((student_logits.argmax(-1) == teacher_logits.argmax(-1)) & mask).sum().item()
        count += n
    student.train()
    return held_out_metrics(ce_sum, kl_sum, agree, count, teacher_ce_sum if with_teacher else None)


def reference_points(student: nn.Module, teacher: TeacherOutputs, batches: list[tuple[torch.Tensor, ...]],
                     evaluate_on: Callable[..., dict[str, float]], chunk: float, autocast) -> dict[str, float]:
    """The run's own yardsticks, measured before the first step: the teacher's held-out perplexity and the
    student's (on the same tokens). The relative sanity checks and the divergence stop are judged against them.
    `evaluate_on` is this run's evaluation (`evaluate`, or the fused path's) and `chunk` its chunk setting."""
    metrics = evaluate_on(student, teacher, batches, chunk, autocast, with_teacher=True)
    return {"ref/teacher_val_ppl": metrics["teacher/ppl"], "ref/student_val_ppl_start": metrics["val/ppl"]}
