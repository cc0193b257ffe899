"""The verdict of `ctkd-tune validate`: pure statistics over a table of runs (one row per arm × seed).

An arm passes when, over all of its seeds (each run to the end):
    target     mean final val/ppl ≤ the target: an absolute value, or the reference arm's mean (fallback A);
    checks     every sanity check of `checks.sanity_checks` at 10%, 33% and 100% passes on every seed, except
               the final-ppl check (the target above judges the final ppl);
    stability  no seed has a val/ppl spike (`has_spike`: an evaluation > 1.5× the previous one, after the first
               10% of the run) or a temperature runaway (`checks.temperature_runaway`).
The recommendation is the passing arm (never the `learnable` ablation) with the lowest mean final val/ppl. The
difference to fallback A is paired by seed: a t-interval on the per-seed differences (n/a with one seed).

    verdict = judge(runs, Target(value=400.0))   # runs: DataFrame with the RUN_COLUMNS below
    print(format_table(verdict.arms)); print("\n".join(verdict.lines))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from ctkd_tune.stats import SPIKE_AFTER, SPIKE_FACTOR, PairedDiff, has_spike, paired_ci

REFERENCE_ARM = "fallback_A"
KIND_ORDER = {"search": 0, "fallback": 1, "ablation": 2}
RUN_COLUMNS = ("arm", "kind", "seed", "status", "final_val_ppl", "checks_passed", "spike", "runaway")
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
        "status": "completed" if summary["status"] == "completed" else "diverged",
        "stop_reason": None if summary["status"] == "completed" else summary["status"],
        "final_val_ppl": summary["final_val_ppl"], "best_val_ppl": summary["best_val_ppl"],
        "final_temperature": summary["final_temperature"], "final_lambda": summary["final_lambda"],
        "steps": summary["steps"],
        "checks_passed": not [name for name in failed if name != FINAL_CHECK],
        "checks_failed": ", ".join(failed),
        "spike": has_spike([(r["step"], r["val/ppl"]) for r in history if "val/ppl" in r], total_steps),
        "runaway": bool(summary["temperature_runaway"]),
        "tau_start": temps[0]["ctkd/temperature"] if temps else None,
        "tau_mid": mid.get("ctkd/temperature"),
        "tau_end": temps[-1]["ctkd/temperature"] if temps else None,
        "tau_lo": min(r["ctkd/temperature_min"] for r in temps) if temps else None,
        "tau_hi": max(r["ctkd/temperature_max"] for r in temps) if temps else None,
        "wall_time_s": summary["wall_time_s"],
    }


def judge(runs, target: Target, seeds: Sequence[int] | None = None, confidence: float = 0.95) -> Verdict:
    """Per-arm statistics, pass/fail with reasons, and the recommendation (see the module docstring).

    `runs` needs RUN_COLUMNS (tau_* and label optional); `seeds`, if given, are the seeds every arm must have.
    """
    import pandas as pd

    missing = [c for c in RUN_COLUMNS if c not in runs]
    if missing:
        raise ValueError(f"validation table lacks columns {missing}")
    runs = runs.copy()
    runs["ok"] = (runs["status"] == "completed") & runs["final_val_ppl"].notna()
    ref = runs[(runs["arm"] == (target.vs or REFERENCE_ARM)) & runs["ok"]].set_index("seed")["final_val_ppl"]
    rows = []
    for arm, group in runs.groupby("arm", sort=False):
        done = group[group["ok"]]
        ppl = done["final_val_ppl"].astype(float)
        paired = done[done["seed"].isin(ref.index)]
        diff = paired_ci(paired["final_val_ppl"].astype(float).tolist(), ref[paired["seed"]].tolist(), confidence) \
            if arm != (target.vs or REFERENCE_ARM) else PairedDiff(None, None, None, 0)
        n = len(group)
        rows.append({
            "arm": arm, "kind": group["kind"].iloc[0], "label": group["label"].iloc[0] if "label" in group else arm,
            "order": group["order"].min() if "order" in group else 0,
            "seeds": n, "completed": len(done),
            "ppl_mean": ppl.mean() if len(ppl) else None, "ppl_std": ppl.std(ddof=1) if len(ppl) > 1 else None,
            "diff_vs_A": diff.mean, "ci_low": diff.low, "ci_high": diff.high, "pairs": diff.n,
            "checks": (group["ok"] & group["checks_passed"].astype(bool)).sum() / n,
            "stable": (group["ok"] & ~group["spike"].astype(bool) & ~group["runaway"].astype(bool)).sum() / n,
            **{k: group[k].astype(float).mean() for k in ("tau_start", "tau_mid", "tau_end") if k in group},
            **({"tau_lo": group["tau_lo"].astype(float).min(), "tau_hi": group["tau_hi"].astype(float).max()}
               if "tau_lo" in group and "tau_hi" in group else {}),
        })
    arms = pd.DataFrame(rows)
    arms["_k"] = arms["kind"].map(KIND_ORDER).fillna(9)
    arms = arms.sort_values(["_k", "order", "arm"], kind="stable").drop(columns=["_k"]).reset_index(drop=True)
    ref_mean = float(ref.mean()) if len(ref) else None
    reasons = [_fail_reasons(a, target, ref_mean, seeds, runs) for a in arms.to_dict("records")]
    arms["passes"] = [not r for r in reasons]
    arms["why"] = ["; ".join(r) for r in reasons]
    return _recommend(arms, target, confidence)


def _fail_reasons(a: dict, target: Target, ref_mean: float | None, seeds, runs) -> list[str]:
    why = []
    if seeds is not None:
        have = set(runs.loc[runs["arm"] == a["arm"], "seed"])
        lacking = [s for s in seeds if s not in have]
        if lacking:
            why.append(f"missing seeds {lacking}")
    if a["completed"] < a["seeds"]:
        why.append(f"{a['seeds'] - a['completed']}/{a['seeds']} runs did not complete")
    if _nan(a["ppl_mean"]):
        why.append("no final val/ppl")
    elif target.vs is None and a["ppl_mean"] > target.value:
        why.append(f"target: {a['ppl_mean']:.4g} > {target.value:g}")
    elif target.vs is not None and ref_mean is None:
        why.append(f"target: {target.vs} has no result")
    elif target.vs is not None and a["ppl_mean"] > ref_mean:
        why.append(f"target: {a['ppl_mean']:.4g} > {target.vs} {ref_mean:.4g}")
    if a["checks"] < 1:
        why.append(f"checks passed on {_frac(a['checks'], a['seeds'])} seeds")
    if a["stable"] < 1:
        why.append(f"stable on {_frac(a['stable'], a['seeds'])} seeds (spike or runaway)")
    return why


def _recommend(arms, target: Target, confidence: float) -> Verdict:
    search = arms[arms["kind"] == "search"]
    passing = arms[arms["passes"] & (arms["kind"] != "ablation")].sort_values("ppl_mean", kind="stable")
    ctkd_passes = bool(search["passes"].any())
    lines = [f"Target: {target.describe()}; checks at 10%/33%/100%; stability (no val/ppl spike > "
             f"{SPIKE_FACTOR}× after {SPIKE_AFTER:.0%} of the run, no temperature runaway)."]
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
        lines.append(f"{what}: {best['arm']} ({best['label']}): mean final val/ppl {_pm(best)}"
                     f"{_vs_a(best, confidence)}.")
        if ctkd_passes and best["kind"] != "search":
            lines.append(f"A fallback beats every passing searched configuration: {best['arm']} is recommended.")
        if best["kind"] == "search" and not _nan(best["ci_low"]) and best["ci_low"] <= 0 <= best["ci_high"]:
            lines.append("Its difference to fallback A is within seed noise (the CI includes 0).")
        if best["kind"] == "search" and not _nan(best.get("tau_lo")) and not _nan(best.get("tau_hi")) and \
                best["tau_hi"] - best["tau_lo"] < FROZEN_TAU_RANGE:
            tau = (best["tau_lo"] + best["tau_hi"]) / 2
            lines.append(f"Its temperature hardly moved (τ in [{best['tau_lo']:.3f}, {best['tau_hi']:.3f}] over the "
                         f"whole run): in effect a fixed T ≈ {tau:.2f}, not a learned curriculum. Compare it with "
                         f"--set temperature.mode=fixed temperature.fixed_value={tau:.2f} before crediting CTKD.")
        ablation = arms[(arms["kind"] == "ablation") & arms["passes"] & (arms["ppl_mean"] < best["ppl_mean"])]
        for a in ablation.to_dict("records"):
            lines.append(f"Note: the {a['arm']} ablation (never recommended) reached a lower mean val/ppl "
                         f"({a['ppl_mean']:.2f}): the adversarial temperature is not what helps here.")
    else:
        lines.append("No arm passes: nothing to recommend (try more steps, a looser target, or a new search).")
    return Verdict(arms, recommended, ctkd_passes, lines)


# --- formatting ---------------------------------------------------------------------------------------------------

def table_rows(arms) -> list[dict[str, str]]:
    """The side-by-side table, as strings (for the terminal, validation.md and report.md)."""
    out = []
    for a in arms.to_dict("records"):
        tau = "—" if _nan(a.get("tau_start")) else \
            f"{a['tau_start']:.2f} → {a['tau_mid']:.2f} → {a['tau_end']:.2f} [{a['tau_lo']:.2f}, {a['tau_hi']:.2f}]"
        out.append({"arm": a["arm"], "config": a["label"], "final val/ppl": _pm(a),
                    "Δ vs A (95% CI)": _diff(a), "checks": _frac(a["checks"], a["seeds"]),
                    "stable": _frac(a["stable"], a["seeds"]), "τ start → mid → end [min, max]": tau,
                    "verdict": "PASS" if a["passes"] else f"fail: {a['why']}"})
    return out


def format_table(arms, markdown: bool = False) -> str:
    rows = table_rows(arms)
    if not rows:
        return "(no runs)"
    keys = list(rows[0])
    if markdown:
        esc = lambda s: str(s).replace("|", "\\|")
        return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] +
                         ["| " + " | ".join(esc(r[k]) for k in keys) + " |" for r in rows])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    line = lambda r: "  ".join(str(r[k]).ljust(widths[k]) for k in keys).rstrip()
    return "\n".join([line({k: k for k in keys})] + [line(r) for r in rows])


def _pm(a) -> str:
    if _nan(a["ppl_mean"]):
        return "—"
    std = "n/a" if _nan(a["ppl_std"]) else f"{a['ppl_std']:.2f}"
    return f"{a['ppl_mean']:.2f} ± {std} (n={a['completed']})"


def _diff(a) -> str:
    if a["arm"] == REFERENCE_ARM:
        return "reference"
    if _nan(a["diff_vs_A"]):
        return "n/a"
    ci = "n/a" if _nan(a["ci_low"]) else f"[{a['ci_low']:+.2f}, {a['ci_high']:+.2f}]"
    return f"{a['diff_vs_A']:+.2f} {ci}"


def _vs_a(a, confidence: float) -> str:
    if a["arm"] == REFERENCE_ARM or _nan(a["diff_vs_A"]):
        return ""
    ci = ("CI n/a with one seed" if _nan(a["ci_low"]) else
          f"{confidence:.0%} CI [{a['ci_low']:+.2f}, {a['ci_high']:+.2f}], paired by seed")
    return f"; vs fallback A {a['diff_vs_A']:+.2f} ({ci})"


def _frac(fraction: float, n: int) -> str:
    return f"{round(fraction * n)}/{n}"


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
