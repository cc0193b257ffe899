"""The plan's sanity checks of a finished run, as code: `distill` writes them to summary.json, `validate` reuses them.

At 10%, 33% and 100% of the run:
    val/ppl below checks.ppl_at_10, checks.ppl_at_33 and checks.ppl_target;
    the temperature inside [tau_min, tau_max];
    λ exactly 0 while still in the warmup, and ≈ λ_max at the end (mode ctkd only);
    the KD loss falling: val/kl (KL to the teacher at T = 1, comparable across temperatures) lower at the end
    than at 10%.
Temperature runaway: over the last 10% of the run the temperature stays within `runaway_tolerance` of the range
from one of its bounds — what plain minimisation does, and what CTKD must not do.
"""

from __future__ import annotations

import math
from typing import Any

from ctkd_tune.config import Config

CHECK_FRACTIONS = {"10%": 0.10, "33%": 0.33, "100%": 1.0}


def check_steps(total_steps: int) -> dict[str, int]:
    """The step (count of completed updates) at which each fraction is checked; evaluation runs there."""
    return {label: max(1, math.ceil(frac * total_steps)) for label, frac in CHECK_FRACTIONS.items()}


def temperature_runaway(history: list[dict[str, Any]], cfg: Config) -> bool:
    """True if the (mean) temperature hugs a bound over the last 10% of a learned-temperature run."""
    t = cfg.temperature
    if not t.learned:
        return False
    tail_start = cfg.train.steps - max(1, cfg.train.steps // 10)
    tail = [row["ctkd/temperature"] for row in history if row["step"] > tail_start and "ctkd/temperature" in row]
    if not tail:
        return False
    margin = cfg.checks.runaway_tolerance * (t.tau_max - t.tau_min)
    return all(v >= t.tau_max - margin for v in tail) or all(v <= t.tau_min + margin for v in tail)


def sanity_checks(history: list[dict[str, Any]], cfg: Config) -> dict[str, dict[str, Any]]:
    """{check name: {"passed": bool, "value": ..., "limit": ...}} plus "all_passed" — for a finished run."""
    by_step = {row["step"]: row for row in history}
    t, s, c = cfg.temperature, cfg.schedule, cfg.checks
    ppl_limits = {"10%": c.ppl_at_10, "33%": c.ppl_at_33, "100%": c.ppl_target}
    results: dict[str, dict[str, Any]] = {}
    for label, step in check_steps(cfg.train.steps).items():
        row = by_step.get(step)
        if row is None or "val/ppl" not in row:
            results[f"ppl@{label}"] = {"passed": False, "value": None, "limit": ppl_limits[label],
                                       "note": "run did not reach this point"}
            continue
        results[f"ppl@{label}"] = {"passed": row["val/ppl"] < ppl_limits[label], "value": row["val/ppl"],
                                   "limit": ppl_limits[label]}
        lo, hi = row["ctkd/temperature_min"], row["ctkd/temperature_max"]
        in_bounds = not t.learned or (t.tau_min - 1e-4 <= lo and hi <= t.tau_max + 1e-4)
        results[f"temperature_in_bounds@{label}"] = {"passed": in_bounds, "value": [lo, hi],
                                                     "limit": [t.tau_min, t.tau_max]}
        if t.adversarial:
            lam = row["ctkd/lambda"]
            if step - 1 < s.warmup_steps(cfg.train.steps):  # row "step" counts completed updates; λ used 0-based step - 1
                results[f"lambda_zero_in_warmup@{label}"] = {"passed": lam == 0.0, "value": lam, "limit": 0.0}
            if label == "100%":
                ok = abs(lam - s.lambda_max) <= 1e-3 * max(1.0, s.lambda_max)
                results["lambda_at_max@100%"] = {"passed": ok, "value": lam, "limit": s.lambda_max}
    first, last = by_step.get(check_steps(cfg.train.steps)["10%"]), by_step.get(cfg.train.steps)
    if first is not None and last is not None and "val/kl" in first and "val/kl" in last:
        results["kd_loss_falling"] = {"passed": last["val/kl"] < first["val/kl"], "value": last["val/kl"],
                                      "limit": first["val/kl"]}
    else:
        results["kd_loss_falling"] = {"passed": False, "value": None, "limit": None,
                                      "note": "run did not reach the end"}
    runaway = temperature_runaway(history, cfg)
    results["no_temperature_runaway"] = {"passed": not runaway, "value": runaway, "limit": False}
    results["all_passed"] = {"passed": all(r["passed"] for r in results.values())}
    return results
