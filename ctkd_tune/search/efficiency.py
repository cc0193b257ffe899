"""How fast a search got somewhere: the steps all its trials had spent when each ended, and when it first
finished a trial at a target val/ppl (what `benchmarks/bench_search_efficiency.py` compares and the report plots).
"""

from __future__ import annotations

import math

from ctkd_tune.search.results import TrialStatus
from ctkd_tune.values import finite, plain


def search_progress(trials, curves):
    """One row per trial, in the order the trials ended (their last report): `steps_spent`, the training steps all
    trials of the search had run by then; the trial's `status` and `final_val_ppl`; and `best_so_far`, the best
    final val/ppl of the trials completed by then (None before the first). Frames of trials.parquet and
    curves.parquet; `reported_at` orders reports across concurrent trials.

    A trial's cost is the furthest step it had reported: pruned and diverged trials count what they ran, a trial
    still running counts what it had reached. Only completed trials set `best_so_far`: a pruned trial's early
    val/ppl is not a finished configuration.
    """
    import pandas as pd

    if "reported_at" not in curves:
        raise ValueError("curves.parquet has no reported_at column (a search from before ctkd-tune recorded it)")
    reports = curves[curves["step"].notna() & curves["reported_at"].notna()]
    ends = reports.groupby("trial_id")["reported_at"].max().sort_values(kind="stable")
    info = trials.set_index("trial_id")
    rows, best = [], math.inf
    for trial_id, ended in ends.items():
        status = info["status"].get(trial_id)
        value = plain(info["final_val_ppl"].get(trial_id))
        if status == TrialStatus.COMPLETED and finite(value):
            best = min(best, value)
        rows.append({"trial_id": trial_id, "steps_spent": _steps_spent(reports[reports["reported_at"] <= ended]),
                     "status": status, "final_val_ppl": value, "best_so_far": best if best < math.inf else None})
    return pd.DataFrame(rows, columns=["trial_id", "steps_spent", "status", "final_val_ppl", "best_so_far"])


def steps_to_target(trials, curves, target: float) -> tuple[int | None, int]:
    """(training steps the search had spent when it first finished a trial with final val/ppl ≤ target, or None if
    it never did; steps it spent in all). See `search_progress`."""
    progress = search_progress(trials, curves)
    if not len(progress):
        return None, 0
    hits = progress[progress["best_so_far"].notna() & (progress["best_so_far"] <= target)]
    return (int(hits["steps_spent"].iloc[0]) if len(hits) else None), int(progress["steps_spent"].iloc[-1])


def _steps_spent(reports) -> int:
    return int(reports.groupby("trial_id")["step"].max().sum()) if len(reports) else 0
