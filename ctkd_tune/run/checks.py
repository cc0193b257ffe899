"""The plan's sanity checks of a finished run, as code: `distill` writes them to summary.json, `validate` reuses them.

At 10%, 33% and 100% of the run:
    val/ppl below a limit. checks.thresholds "relative" (default) takes the limits from the run's own reference
    points, measured before the first step: the student's val/ppl s0 and the teacher's t on the same tokens.
    At 10% and 33% the student must be below s0 (learning); at the end below exp(log s0 − g·(log s0 − log t)),
    g = checks.gap_closed_target (it closed that fraction of its log-perplexity gap to the teacher; below s0 when
    it started better than the teacher). "absolute" uses the fixed checks.ppl_at_10, ppl_at_33 and ppl_target,
    tuned for the Shakespeare preset;
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
NEAR_BOUND = 0.9
"""Drift: a temperature that went this share of the (log) way from tau_init to a bound has arrived there, even if
it barely moves any more: a sigmoid-bounded τ creeps towards its bound without reaching the runaway tolerance."""


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


def ppl_limits(cfg: Config, references: dict[str, float] | None) -> dict[str, float]:
    """The val/ppl ceilings at 10%, 33% and 100% (see the module docstring); absolute without reference points."""
    c, refs = cfg.checks, references or {}
    start, teacher = refs.get("ref/student_val_ppl_start"), refs.get("ref/teacher_val_ppl")
    if c.thresholds == "absolute" or start is None or teacher is None:
        return {"10%": c.ppl_at_10, "33%": c.ppl_at_33, "100%": c.ppl_target}
    gap = max(0.0, math.log(start) - math.log(teacher))
    return {"10%": start, "33%": start, "100%": math.exp(math.log(start) - c.gap_closed_target * gap) if gap
            else start}


def divergence_limit(cfg: Config, references: dict[str, float] | None) -> float:
    """val/ppl above which `distill` stops a run as diverged: diverge_factor × its step-0 val/ppl (relative), else
    never (absolute: a search applies checks.ppl_at_10 itself)."""
    start = (references or {}).get("ref/student_val_ppl_start")
    if cfg.checks.thresholds == "absolute" or start is None:
        return math.inf
    return cfg.checks.diverge_factor * start


def default_ppl_threshold(cfg: Config) -> float | None:
    """A search's val/ppl divergence threshold: checks.ppl_at_10 with absolute thresholds; None with relative ones
    (each run then stops itself at diverge_factor × its own start, see `divergence_limit`)."""
    return cfg.checks.ppl_at_10 if cfg.checks.thresholds == "absolute" else None


def drift_shares(history: list[dict[str, Any]], cfg: Config) -> tuple[float, float] | None:
    """(moved, late): how far the (mean) temperature moved over the whole run and over its last quarter, in log τ,
    signed (+ upwards), as shares of the way from tau_init to the bound it moved towards (tau_max when it rose,
    tau_min when it fell). None without a learned temperature.

    The way to the bound, not the whole range: from an init near a bound, going all the way to it is a small share
    of the range (3.14 → 6.0 of [0.68, 6.12] is 0.30 of the log range, 0.97 of the way to tau_max). An init at the
    bound it moves towards counts the whole range. The start is tau_init (where every learned temperature starts,
    at step 0), the end the last logged row; the last quarter starts at the last row at or before 3/4 of the last
    step. A run stopped early is judged on the part it ran, and a table with only the evaluations
    (trials.parquet) gives the same answer as the per-step history.
    """
    t = cfg.temperature
    rows = sorted((row["step"], row["ctkd/temperature"]) for row in history if "ctkd/temperature" in row)
    if not t.learned or not rows:
        return None
    rows = [(0, t.tau_init), *rows]
    quarter = max(r for r in rows if r[0] <= 0.75 * rows[-1][0])
    end, start = math.log(rows[-1][1]), math.log(t.tau_init)
    way = math.log(t.tau_max / t.tau_init) if end >= start else math.log(t.tau_init / t.tau_min)
    if way < 1e-3 * math.log(t.tau_max / t.tau_min):  # starting at that bound: share of the whole range
        way = math.log(t.tau_max / t.tau_min)
    return (end - start) / way, (end - math.log(quarter[1])) / way


def temperature_drift(history: list[dict[str, Any]], cfg: Config) -> bool:
    """True if a learned temperature drifted towards a bound (shares from `drift_shares`) and either kept going or
    got there, without being a runaway (`temperature_runaway`, which takes precedence):
        moved    |moved| > checks.drift_share                     (it went that share of the way to the bound)
        going    late · sign(moved) ≥ LATE_PACE / 4 · |moved|      (the last quarter moved on the same way, at
                                                                   least a fifth as fast as the run's average)
        arrived  |moved| ≥ NEAR_BOUND                              (it went nearly all the way: a bounded τ
                                                                   creeps towards its bound without touching it)
    On log τ, because τ scales the logits: 1 → 2 changes the targets as much as 2 → 4. A steady climb puts 1/4 of
    its move in the last quarter and trips; a τ that moved part of the way and settled does not; a τ within
    `checks.runaway_tolerance` of a bound over the last 10% of the run is a runaway, not a drift.
    """
    shares = drift_shares(history, cfg)
    if shares is None or temperature_runaway(history, cfg):
        return False
    moved, late = shares
    going = late * math.copysign(1.0, moved) >= LATE_PACE / 4 * abs(moved)
    return abs(moved) > cfg.checks.drift_share and (going or abs(moved) >= NEAR_BOUND)


def sanity_checks(history: list[dict[str, Any]], cfg: Config,
                  references: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """{check name: {"passed": bool, "value": ..., "limit": ...}} plus "all_passed" — for a finished run."""
    by_step = {row["step"]: row for row in history}
    t, s = cfg.temperature, cfg.schedule
    limits = ppl_limits(cfg, references)
    results: dict[str, dict[str, Any]] = {}
    for label, step in check_steps(cfg.train.steps).items():
        row = by_step.get(step)
        if row is None or "val/ppl" not in row:
            results[f"ppl@{label}"] = {"passed": False, "value": None, "limit": limits[label],
                                       "note": "run did not reach this point"}
            continue
        results[f"ppl@{label}"] = {"passed": row["val/ppl"] < limits[label], "value": row["val/ppl"],
                                   "limit": limits[label]}
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
