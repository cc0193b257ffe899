"""Held-out evaluation's shared parts: the sums → metrics formulas, the divergence bound, the run's reference points.

Each `step.Step` computes its own sums over the held-out batches (`LogitsStep.evaluate` from logits,
`fused_step.FusedStep.evaluate` chunk by chunk from hidden states); both end in `held_out_metrics`, so the two
paths report the same keys from the same formulas.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ctkd_tune.run.step import Batch, Step

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


def reference_points(path: Step, batches: list[Batch]) -> dict[str, float]:
    """The run's own yardsticks, measured before the first step: the teacher's held-out perplexity and the
    student's (on the same tokens). The relative sanity checks and the divergence stop are judged against them."""
    metrics = path.evaluate(batches, with_teacher=True)
    return {"ref/teacher_val_ppl": metrics["teacher/ppl"], "ref/student_val_ppl_start": metrics["val/ppl"]}
