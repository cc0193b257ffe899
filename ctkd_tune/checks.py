"""The plan's sanity checks of a finished run, as code: `distill` writes them to summary.json, `validate` reuses them.

At 10%, 33% and 100% of the run:
    val/ppl below checks.ppl_at_10, checks.ppl_at_33 and checks.ppl_target;
    the temperature inside [tau_min, tau_max];
    λ exactly 0 while still in the warmup, and ≈ λ_max at the end (mode ctkd only);
    the KD loss falling: val/kl (KL to the teacher at T = 1, comparable across temperatures) lower at the end
    than at 10%.
Temperature runaway: over the last 10% of the run the temperature stays within `runaway_tolerance` of the range
from one of its bounds — what plain minimisation does, and what CTKD must not do.
Temperature drift: the temperature moved more than `drift_share` of its (log) range towards a bound and was still
moving that way over the last quarter of the run — a runaway on its way, before it reaches the bound
(`temperature_drift`).
"""

from __future__ import annotations

import math
from typing import Any

from ctkd_tune.config import Config

CHECK_FRACTIONS = {"10%": 0.10, "33%": 0.33, "100%": 1.0}
LATE_PACE = 0.2
"""Drift: over the last quarter of the run the temperature still moves on at ≥ this fraction of its average pace
(a bounded temperature slows down as it nears its bound, so "still moving" cannot ask for full pace)."""


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
    return all(at_bound(v, cfg) == "upper" for v in tail) or all(at_bound(v, cfg) == "lower" for v in tail)


def at_bound(tau: float, cfg: Config) -> str | None:
    """"upper" or "lower" if τ lies within `checks.runaway_tolerance` of the range from that bound, else None."""
    t = cfg.temperature
    margin = cfg.checks.runaway_tolerance * (t.tau_max - t.tau_min)
    return "upper" if tau >= t.tau_max - margin else "lower" if tau <= t.tau_min + margin else None


class RunawayCounter:
    """Consecutive evaluations, once λ > 0, with the (mean) temperature at a bound (`at_bound`): a search stops a
    trial on it early, where `temperature_runaway` judges a finished run's last 10%."""

    def __init__(self, cfg: Config):
        self.cfg, self.count = cfg, 0

    def update(self, metrics: dict[str, Any]) -> int:
        tau, t = metrics.get("ctkd/temperature"), self.cfg.temperature
        # the temperature moves under plain minimisation always, under CTKD only once λ > 0
        moving = t.learned and (not t.adversarial or metrics.get("ctkd/lambda", 0.0) > 0)
        self.count = self.count + 1 if moving and tau is not None and at_bound(tau, self.cfg) else 0
        return self.count


def drift_shares(history: list[dict[str, Any]], cfg: Config) -> tuple[float, float] | None:
    """(moved, late): how far the (mean) temperature moved over the whole run and over its last quarter, in log τ,
    signed (+ towards tau_max), as shares of the range log(tau_max / tau_min). None without a learned temperature.

    The start is tau_init (where every learned temperature starts, at step 0), the end the last logged row; the
    last quarter starts at the last row at or before 3/4 of the last step. A run stopped early is judged on the part
    it ran, and a table with only the evaluations (trials.parquet) gives the same answer as the per-step history.
    """
    t = cfg.temperature
    rows = sorted((row["step"], row["ctkd/temperature"]) for row in history if "ctkd/temperature" in row)
    if not t.learned or not rows:
        return None
    rows = [(0, t.tau_init), *rows]
    log_range = math.log(t.tau_max / t.tau_min)
    quarter = max(r for r in rows if r[0] <= 0.75 * rows[-1][0])
    end = math.log(rows[-1][1])
    return (end - math.log(t.tau_init)) / log_range, (end - math.log(quarter[1])) / log_range


def temperature_drift(history: list[dict[str, Any]], cfg: Config) -> bool:
    """True if a learned temperature drifted towards a bound and kept going (shares from `drift_shares`):
        moved  |moved| > checks.drift_share                      (it crossed that share of its range)
        going  late · sign(moved) ≥ LATE_PACE / 4 · |moved|       (the last quarter moved on the same way, at
                                                                   least a fifth as fast as the run's average)
    On log τ, because τ scales the logits: 1 → 2 changes the targets as much as 2 → 4. A steady climb puts 1/4 of
    its move in the last quarter and trips; a τ that rose and then settled (its last quarter flat) does not; a τ
    parked at a bound (moving < 1/20 of its move over the last quarter) is a runaway (`temperature_runaway`).
    """
    shares = drift_shares(history, cfg)
    if shares is None:
        return False
    moved, late = shares
    return abs(moved) > cfg.checks.drift_share and late * math.copysign(1.0, moved) >= LATE_PACE / 4 * abs(moved)


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
    shares = drift_shares(history, cfg)
    results["no_temperature_drift"] = {"passed": not temperature_drift(history, cfg),
                                       "value": None if shares is None else
                                       {"moved": round(shares[0], 4), "last_quarter": round(shares[1], 4)},
                                       "limit": cfg.checks.drift_share}
    results["all_passed"] = {"passed": all(r["passed"] for r in results.values())}
    return results
