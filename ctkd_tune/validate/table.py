"""The verdict's table: one row of strings per arm, for the terminal, validation.md and report.md.

    print(format_table(verdict.arms))               # aligned columns
    format_table(verdict.arms, markdown=True)        # a Markdown table
"""

from __future__ import annotations

import math
from typing import Any

from ctkd_tune.search.arms import REFERENCE_ARM
from ctkd_tune.validate.stats import MAX_SEEDS


def table_rows(arms) -> list[dict[str, str]]:
    """The side-by-side table, as strings (for the terminal, validation.md and report.md)."""
    out = []
    for a in arms.to_dict("records"):
        tau = "—" if missing(a.get("tau_start")) else \
            f"{a['tau_start']:.2f} → {a['tau_mid']:.2f} → {a['tau_end']:.2f} [{a['tau_lo']:.2f}, {a['tau_hi']:.2f}]"
        out.append({"arm": a["arm"], "config": a["label"], "final val/ppl": mean_pm(a),
                    "Δ vs A (95% CI)": _diff(a), "seeds needed (paired sd)": _needed(a),
                    "checks": fraction(a["checks"], a["seeds"]),
                    "stable": fraction(a["stable"], a["seeds"]), "τ start → mid → end [min, max]": tau,
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


def mean_pm(a) -> str:
    if missing(a["ppl_mean"]):
        return "—"
    std = "n/a" if missing(a["ppl_std"]) else f"{a['ppl_std']:.2f}"
    return f"{a['ppl_mean']:.2f} ± {std} (n={a['completed']})"


def _diff(a) -> str:
    if a["arm"] == REFERENCE_ARM:
        return "reference"
    if missing(a["diff_vs_A"]):
        return "n/a"
    ci = "n/a" if missing(a["ci_low"]) else f"[{a['ci_low']:+.2f}, {a['ci_high']:+.2f}]"
    return f"{a['diff_vs_A']:+.2f} {ci}"


def _needed(a) -> str:
    if a["arm"] == REFERENCE_ARM:
        return "reference"
    if missing(a.get("paired_sd")):
        return "n/a"
    return f"{'>' + str(MAX_SEEDS) if missing(a['seeds_needed']) else int(a['seeds_needed'])} (sd {a['paired_sd']:.2f})"


def versus_a(a, confidence: float) -> str:
    if a["arm"] == REFERENCE_ARM or missing(a["diff_vs_A"]):
        return ""
    ci = ("CI n/a with one seed" if missing(a["ci_low"]) else
          f"{confidence:.0%} CI [{a['ci_low']:+.2f}, {a['ci_high']:+.2f}], paired by seed")
    return f"; vs fallback A {a['diff_vs_A']:+.2f} ({ci})"


def fraction(fraction: float, n: int) -> str:
    return f"{round(fraction * n)}/{n}"


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
