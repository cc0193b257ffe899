"""The verdict of `ctkd-tune validate`: pure statistics over a table of runs (one row per arm × seed).

An arm passes when, over all of its seeds (each run to the end):
    target     mean final val/ppl ≤ the target: an absolute value, or the reference arm's mean (fallback A);
    checks     every sanity check of `checks.sanity_checks` at 10%, 33% and 100% passes on every seed, except
               the final-ppl check (the target above judges the final ppl);
    stability  no seed has a val/ppl spike (`has_spike`: an evaluation > 1.5× the previous one, after the first
               10% of the run), a temperature runaway (`checks.temperature_runaway`) or a temperature drift
               (`checks.temperature_drift`).
The recommendation is the passing arm (never the `learnable` ablation) with the lowest mean final val/ppl.

Every arm is compared with fallback A, paired by seed: a t-interval on the per-seed differences. The verdict says
"beats" only when the interval lies below 0, "is worse than" when it lies above 0, and otherwise "ties with ...,
within noise" together with the seeds that would resolve a stated difference (`Resolve`, 2% of fallback A's mean
by default) at 80% power (`stats.seeds_needed`, from the paired sd). With one seed the variance is unknown: no
interval, no winner, no seeds-needed figure. Every arm with a learned temperature whose range over the run stays
below FROZEN_TAU_RANGE is called in effect a fixed temperature; arms whose temperature drifted are named.

    verdict = judge(runs, Target(value=400.0))   # runs: DataFrame with the RUN_COLUMNS below (+ drift, tau_*, ...)
    print(format_table(verdict.arms)); print("\n".join(verdict.lines))   # format_table: validate/table.py

What the code branches on are enums whose values are the strings the tables keep: `ValidationStatus` (a validation
run's status: the run's own `RunStatus`, or error), `ArmKind` (an arm's kind) and `Outcome` (an arm against fallback
A, whose value is the verdict's phrase).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Sequence

from ctkd_tune.search.arms import REFERENCE_ARM
from ctkd_tune.config import LEARNED_MODES
from ctkd_tune.validate.stats import MAX_SEEDS, POWER, SPIKE_AFTER, SPIKE_FACTOR, PairedDiff, has_spike, paired_ci, seeds_needed
from ctkd_tune.validate.table import fraction, mean_pm, missing, versus_a



class ValidationStatus(StrEnum):
    """A validation run's `status` (validation.parquet keeps the value): it ran to the end, was stopped as
    diverged, or raised (not a result: `--resume` runs it again)."""
    COMPLETED = "completed"
    DIVERGED = "diverged"
    ERROR = "error"


class ArmKind(StrEnum):
    """An arm's `kind` (validation.json keeps the value): a searched configuration, a fallback of the plan, or the
    `learnable` ablation (never recommended)."""
    SEARCH = "search"
    FALLBACK = "fallback"
    ABLATION = "ablation"


class Outcome(StrEnum):
    """An arm against fallback A, paired by seed (`vs_A`); the value is the verdict's phrase ("X beats fallback A").

    BEATS: the interval lies below 0; WORSE: above 0; TIES: it holds 0; UNKNOWN: one seed, no interval."""
    BEATS = "beats"
    WORSE = "is worse than"
    TIES = "ties with"
    UNKNOWN = "unknown"


KIND_ORDER = {ArmKind.SEARCH: 0, ArmKind.FALLBACK: 1, ArmKind.ABLATION: 2}
RUN_COLUMNS = ("arm", "kind", "seed", "status", "final_val_ppl", "checks_passed", "spike", "runaway")
DRIFT_CHECK = "no_temperature_drift"
FINAL_CHECK = "ppl@100%"
FROZEN_TAU_RANGE = 0.05
"""A learned temperature whose whole range over the run (all seeds, all tokens) is narrower than this did not
learn: the arm is in effect a fixed temperature, and the verdict says so."""


@dataclass
class Target:
    """Absolute (`value`: mean final val/ppl ≤ value) or relative (`vs`: mean ≤ that arm's mean)."""
    value: float | None = None
    vs: str | None = None

    def describe(self) -> str:
        return f"mean final val/ppl ≤ {self.value:g}" if self.vs is None else \
            f"mean final val/ppl ≤ {self.vs}'s mean"


@dataclass
class Resolve:
    """The difference the seeds-needed figure is sized for: `value`% of fallback A's mean val/ppl when `relative`,
    else `value` val/ppl."""
    value: float = 2.0
    relative: bool = True

    def ppl(self, reference_mean: float | None) -> float | None:
        if not self.relative:
            return self.value
        return None if missing(reference_mean) else self.value / 100 * reference_mean

    def describe(self) -> str:
        return f"{self.value:g}%" if self.relative else f"{self.value:g} val/ppl"


@dataclass
class Verdict:
    arms: Any  # DataFrame, one row per arm (see `judge`)
    recommended: str | None
    ctkd_passes: bool
    lines: list[str] = field(default_factory=list)


# --- one run, and the verdict over all runs ------------------------------------------------------------------------

def run_metrics(summary: dict[str, Any], history: list[dict[str, Any]], total_steps: int) -> dict[str, Any]:
    """One validation run's verdict inputs from `distill`'s summary and per-step history."""
    checks = summary["checks"]
    failed = [name for name, c in checks.items() if name != "all_passed" and not c["passed"]]
    temps = [r for r in history if "ctkd/temperature" in r]
    mid = min(temps, key=lambda r: abs(r["step"] - total_steps / 2)) if temps else {}
    return {
        "status": str(summary["status"]),  # the run's RunStatus: "completed" or "diverged"
        "stop_reason": summary["stop_reason"],
        "final_val_ppl": summary["final_val_ppl"], "best_val_ppl": summary["best_val_ppl"],
        "final_temperature": summary["final_temperature"], "final_lambda": summary["final_lambda"],
        "steps": summary["steps"],
        "checks_passed": not [name for name in failed if name != FINAL_CHECK],
        "checks_failed": ", ".join(failed),
        "spike": has_spike([(r["step"], r["val/ppl"]) for r in history if "val/ppl" in r], total_steps),
        "runaway": bool(summary["temperature_runaway"]),
        "drift": DRIFT_CHECK in checks and not checks[DRIFT_CHECK]["passed"],
        "tau_start": temps[0]["ctkd/temperature"] if temps else None,
        "tau_mid": mid.get("ctkd/temperature"),
        "tau_end": temps[-1]["ctkd/temperature"] if temps else None,
        "tau_lo": min(r["ctkd/temperature_min"] for r in temps) if temps else None,
        "tau_hi": max(r["ctkd/temperature_max"] for r in temps) if temps else None,
        "wall_time_s": summary["wall_time_s"],
    }


def judge_plan(runs, plan: dict[str, Any]) -> Verdict:
    """`judge` with the target, seeds and resolve of a validation plan (validation.json)."""
    return judge(runs, Target(**plan["target"]), seeds=plan["seeds"], resolve=Resolve(**plan.get("resolve", {})))


def judge(runs, target: Target, seeds: Sequence[int] | None = None, confidence: float = 0.95,
          resolve: Resolve | None = None) -> Verdict:
    """Per-arm statistics, pass/fail with reasons, and the recommendation (see the module docstring).

    `runs` needs RUN_COLUMNS (drift, tau_*, label, temperature.mode optional); `seeds`, if given, are the seeds
    every arm must have; `resolve` is the difference the seeds needed are sized for (default 2% of A's mean).
    """
    import pandas as pd

    missing = [c for c in RUN_COLUMNS if c not in runs]
    if missing:
        raise ValueError(f"validation table lacks columns {missing}")
    runs = runs.copy()
    runs["ok"] = (runs["status"] == ValidationStatus.COMPLETED) & runs["final_val_ppl"].notna()
    ref = runs[(runs["arm"] == (target.vs or REFERENCE_ARM)) & runs["ok"]].set_index("seed")["final_val_ppl"]
    ref_mean = float(ref.mean()) if len(ref) else None
    resolve = resolve or Resolve()
    delta = resolve.ppl(ref_mean)
    runs["drift"] = _flags(runs["drift"]) if "drift" in runs else False  # older validations did not record it
    rows = []
    for arm, group in runs.groupby("arm", sort=False):
        done = group[group["ok"]]
        ppl = done["final_val_ppl"].astype(float)
        paired = done[done["seed"].isin(ref.index)]
        diff = paired_ci(paired["final_val_ppl"].astype(float).tolist(), ref[paired["seed"]].tolist(), confidence) \
            if arm != (target.vs or REFERENCE_ARM) else PairedDiff(None, None, None, 0)
        n = len(group)
        learned = group["temperature.mode"].isin(LEARNED_MODES).any() if "temperature.mode" in group else \
            group["kind"].iloc[0] in (ArmKind.SEARCH, ArmKind.ABLATION)
        rows.append({
            "arm": arm, "kind": group["kind"].iloc[0], "label": group["label"].iloc[0] if "label" in group else arm,
            "order": group["order"].min() if "order" in group else 0,
            "seeds": n, "completed": len(done),
            "ppl_mean": ppl.mean() if len(ppl) else None, "ppl_std": ppl.std(ddof=1) if len(ppl) > 1 else None,
            "diff_vs_A": diff.mean, "ci_low": diff.low, "ci_high": diff.high, "pairs": diff.n,
            "paired_sd": diff.sd, "vs_A": _outcome(diff),
            "seeds_needed": None if diff.sd is None or delta is None else seeds_needed(diff.sd, delta, confidence),
            "checks": (group["ok"] & group["checks_passed"].astype(bool)).sum() / n,
            "stable": (group["ok"] & ~group["spike"].astype(bool) & ~group["runaway"].astype(bool)
                       & ~group["drift"]).sum() / n,
            "drift": group["drift"].sum() / n, "learned": bool(learned),
            **{k: group[k].astype(float).mean() for k in ("tau_start", "tau_mid", "tau_end") if k in group},
            **({"tau_lo": group["tau_lo"].astype(float).min(), "tau_hi": group["tau_hi"].astype(float).max()}
               if "tau_lo" in group and "tau_hi" in group else {}),
        })
    arms = pd.DataFrame(rows)
    arms["_k"] = arms["kind"].map(KIND_ORDER).fillna(9)
    arms = arms.sort_values(["_k", "order", "arm"], kind="stable").drop(columns=["_k"]).reset_index(drop=True)
    reasons = [_fail_reasons(a, target, ref_mean, seeds, runs) for a in arms.to_dict("records")]
    arms["passes"] = [not r for r in reasons]
    arms["why"] = ["; ".join(r) for r in reasons]
    return _recommend(arms, runs, target, confidence, resolve, delta)


def _outcome(diff: PairedDiff) -> Outcome | None:
    """The Outcome of a paired difference (`paired_ci`); None when nothing was paired."""
    if diff.mean is None:
        return None
    if diff.low is None:
        return Outcome.UNKNOWN
    return Outcome.BEATS if diff.high < 0 else Outcome.WORSE if diff.low > 0 else Outcome.TIES


def _fail_reasons(a: dict, target: Target, ref_mean: float | None, seeds, runs) -> list[str]:
    why = []
    if seeds is not None:
        have = set(runs.loc[runs["arm"] == a["arm"], "seed"])
        lacking = [s for s in seeds if s not in have]
        if lacking:
            why.append(f"missing seeds {lacking}")
    if a["completed"] < a["seeds"]:
        why.append(f"{a['seeds'] - a['completed']}/{a['seeds']} runs did not complete")
    if missing(a["ppl_mean"]):
        why.append("no final val/ppl")
    elif target.vs is None and a["ppl_mean"] > target.value:
        why.append(f"target: {a['ppl_mean']:.4g} > {target.value:g}")
    elif target.vs is not None and ref_mean is None:
        why.append(f"target: {target.vs} has no result")
    elif target.vs is not None and a["ppl_mean"] > ref_mean:
        why.append(f"target: {a['ppl_mean']:.4g} > {target.vs} {ref_mean:.4g}")
    if a["checks"] < 1:
        why.append(f"checks passed on {fraction(a['checks'], a['seeds'])} seeds")
    if a["stable"] < 1:
        why.append(f"stable on {fraction(a['stable'], a['seeds'])} seeds (spike, runaway or drift)")
    return why


def _recommend(arms, runs, target: Target, confidence: float, resolve: Resolve, delta: float | None) -> Verdict:
    search = arms[arms["kind"] == ArmKind.SEARCH]
    passing = arms[arms["passes"] & (arms["kind"] != ArmKind.ABLATION)].sort_values("ppl_mean", kind="stable")
    ctkd_passes = bool(search["passes"].any())
    lines = [f"Target: {target.describe()}; checks at 10%/33%/100%; stability (no val/ppl spike > "
             f"{SPIKE_FACTOR}× after {SPIKE_AFTER:.0%} of the run, no temperature runaway or drift)."]
    if ctkd_passes:
        names = ", ".join(search.loc[search["passes"], "arm"])
        lines.append(f"Searched CTKD configurations that pass: {names}.")
    else:
        failed = "; ".join(f"{r['arm']} ({r['why']})" for r in search.to_dict("records")) or "none was validated"
        lines.append(f"NO searched CTKD configuration passes: {failed}.")
    recommended = None
    if len(passing):
        best = passing.iloc[0]
        recommended = best["arm"]
        what = "Recommended" if ctkd_passes else "Recommended fallback"
        modest = " — the lowest mean, not a proven win over fallback A" if best["vs_A"] in (Outcome.TIES,
                                                                                            Outcome.UNKNOWN) else ""
        lines.append(f"{what}: {best['arm']} ({best['label']}): mean final val/ppl {mean_pm(best)}"
                     f"{versus_a(best, confidence)}{modest}.")
        if ctkd_passes and best["kind"] != ArmKind.SEARCH:
            lines.append(_fallback_first(best, search[search["passes"]], runs, confidence))
    else:
        lines.append("No arm passes: nothing to recommend (try more steps, a looser target, or a new search).")
    lines += [_versus(a, confidence, resolve, delta) for a in arms.to_dict("records") if isinstance(a["vs_A"], str)]
    for a in arms[arms["learned"]].to_dict("records"):
        if not missing(a.get("tau_lo")) and not missing(a.get("tau_hi")) and a["tau_hi"] - a["tau_lo"] < FROZEN_TAU_RANGE:
            tau = (a["tau_lo"] + a["tau_hi"]) / 2
            lines.append(f"{a['arm']}: its temperature hardly moved (τ in [{a['tau_lo']:.3f}, {a['tau_hi']:.3f}] over "
                         f"the whole run): in effect a fixed T ≈ {tau:.2f}, not a learned curriculum." +
                         (f" Compare it with --set temperature.mode=fixed temperature.fixed_value={tau:.2f} before "
                          "crediting CTKD." if a["arm"] == recommended else ""))
    share = f" ({runs['checks.drift_share'].iloc[0]:g})" if "checks.drift_share" in runs else ""
    for a in arms[arms["drift"] > 0].to_dict("records"):
        moved = f" (mean τ {a['tau_start']:.2f} → {a['tau_end']:.2f})" if not missing(a.get("tau_start")) else ""
        lines.append(f"{a['arm']}: temperature drift on {fraction(a['drift'], a['seeds'])} seeds{moved}: it went more "
                     f"than checks.drift_share{share} of the way from its init to a bound and was still moving "
                     "that way at the end of the run, or got there.")
    if len(passing):
        ablation = arms[(arms["kind"] == ArmKind.ABLATION) & arms["passes"] & (arms["ppl_mean"] < best["ppl_mean"])]
        for a in ablation.to_dict("records"):
            lines.append(f"Note: the {a['arm']} ablation (never recommended) reached a lower mean val/ppl "
                         f"({a['ppl_mean']:.2f}): the adversarial temperature is not what helps here.")
    return Verdict(arms, recommended, ctkd_passes, lines)


def _versus(a: dict, confidence: float, resolve: Resolve, delta: float | None) -> str:
    """One arm against fallback A: beats / is worse than / ties with (and the seeds that would resolve it)."""
    name, outcome = a["arm"], Outcome(a["vs_A"])
    if outcome is Outcome.UNKNOWN:
        return (f"{name} vs fallback A: {a['diff_vs_A']:+.2f} val/ppl with one seed: the variance is unknown, so "
                "there is no interval, no winner and no seeds-needed figure (run at least 2 seeds).")
    stats = (f"{a['diff_vs_A']:+.2f} val/ppl, {confidence:.0%} CI [{a['ci_low']:+.2f}, {a['ci_high']:+.2f}] "
             f"(paired by seed, {a['pairs']} seeds, sd {a['paired_sd']:.2f})")
    if outcome is not Outcome.TIES:
        return f"{name} {outcome.value} fallback A: {stats}."
    target = f"a {resolve.describe()} difference" + (f" ({delta:.2f} val/ppl)" if resolve.relative else "")
    needed = a["seeds_needed"]
    if delta is None:
        more = "no seeds-needed figure without fallback A's mean."
    elif missing(needed):
        more = f"undecided: more than {MAX_SEEDS} seeds would be needed to resolve {target}: in practice a tie."
    elif needed > a["pairs"]:
        extra = int(needed) - a["pairs"]
        more = (f"undecided: {extra} more seed{'s' if extra > 1 else ''} would resolve {target}: {int(needed)} in "
                f"all at {POWER:.0%} power.")
    else:
        more = (f"a tie: {a['pairs']} seeds would have resolved {target} with {POWER:.0%} power, so the true "
                "difference is likely smaller.")
    return f"{name} ties with fallback A, within noise: {stats}; {more}"


def _fallback_first(best, searched, runs, confidence: float) -> str:
    """A fallback has the lowest mean while searched configurations pass: does it beat each of them (paired)?"""
    ok = runs[runs["ok"]]
    mine = ok[ok["arm"] == best["arm"]].set_index("seed")["final_val_ppl"].astype(float)
    ties = []
    for arm in searched["arm"]:
        other = ok[(ok["arm"] == arm) & ok["seed"].isin(mine.index)]
        diff = paired_ci(other["final_val_ppl"].astype(float).tolist(), mine[other["seed"]].tolist(), confidence)
        if _outcome(diff) is not Outcome.WORSE:
            ci = "one seed, no interval" if diff.low is None else \
                f"{confidence:.0%} CI [{diff.low:+.2f}, {diff.high:+.2f}]"
            ties.append(f"{arm} ({arm} − {best['arm']}: {diff.mean:+.2f}, {ci})" if diff.mean is not None else arm)
    if not ties:
        return f"A fallback beats every passing searched configuration: {best['arm']} is recommended."
    return (f"{best['arm']} has the lowest mean but does not beat every passing searched configuration: it ties "
            f"within noise with {', '.join(ties)}.")


def _flags(values) -> Any:
    """A column of booleans with gaps (None, NaN) read as False."""
    return values.map(lambda v: bool(v) if v is not None and v == v else False).astype(bool)
