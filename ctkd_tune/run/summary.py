"""How a run ended (`RunStatus`, and the stop reason in words) and its summary.json (`summarize`).

    summary["status"]        RunStatus.COMPLETED or RunStatus.DIVERGED (a StrEnum: JSON and Parquet keep the string)
    summary["stop_reason"]   None when completed, else the sentence: "diverged at step 12: non-finite gradient"
What code branches on is the status; the reason is for people. Imports no torch, so the CLI can read a summary fast.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from ctkd_tune.config import Config
from ctkd_tune.run.checks import sanity_checks


class RunStatus(StrEnum):
    """How a `distill` run ended: every step done, or stopped early because it diverged."""
    COMPLETED = "completed"
    DIVERGED = "diverged"  # a non-finite loss, gradient or validation loss, or val/ppl far above its start


def summarize(cfg: Config, history: list[dict[str, Any]], stop_reason: str | None, wall_time: float,
              references: dict[str, float] | None = None) -> dict[str, Any]:
    """Status and stop reason (None: completed), final and best val/ppl, the teacher's and the step-0 student's
    val/ppl, final temperature and λ, checks and the resolved config — all finite or None."""
    references = references or {}
    evals = [row for row in history if "val/ppl" in row]
    best = min(evals, key=lambda row: row["val/ppl"]) if evals else None
    final = history[-1] if history else {}
    checks = sanity_checks(history, cfg, references)
    return {
        "status": RunStatus.COMPLETED if stop_reason is None else RunStatus.DIVERGED,
        "stop_reason": stop_reason,
        "steps": final.get("step", 0),
        "teacher_val_ppl": references.get("ref/teacher_val_ppl"),
        "student_val_ppl_start": references.get("ref/student_val_ppl_start"),
        "final_val_ppl": evals[-1]["val/ppl"] if evals else None,
        "best_val_ppl": best["val/ppl"] if best else None,
        "best_step": best["step"] if best else None,
        "final_val_kl": evals[-1]["val/kl"] if evals else None,
        "final_top1_agreement": evals[-1]["val/top1_agreement"] if evals else None,
        "final_temperature": final.get("ctkd/temperature"),
        "final_lambda": final.get("ctkd/lambda"),
        "temperature_runaway": not checks["no_temperature_runaway"]["passed"],
        "wall_time_s": round(wall_time, 3),
        "checks": checks,
        "config": cfg.to_dict(),
    }
