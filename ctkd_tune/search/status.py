"""The compact table of a search, shared by the live console (during `search`) and `ctkd-tune status`.

    rows = [TrialRow("t00-cosine-τ1.0-5.0-λ1.0", "running", 75, 150, 231.4, 2.01, 0.5), ...]
    print(render(rows, elapsed_s=190.0, step_rate=1.6, num_samples=8, max_t=150))

    search: 1/8 done (1 completed, 0 pruned, 0 failed), 2 running, 5 to start
    best val/ppl 180.21 (t01-cosine-τ1.0-5.0-λ0.5) · elapsed 3m10s · ETA ≤ 11m
      trial                          state        step   val/ppl      τ      λ
      t00-cosine-τ1.0-5.0-λ1.0       running    75/150    231.40   2.01   0.50

`render` is a pure function of the rows and the two measured numbers (elapsed time, aggregate steps per second),
so it is tested on recorded results without timing. The ETA is an upper bound: every unfinished trial is counted
to its last step, and early stopping only shortens the search. `status_from_files` builds the rows from an
experiment's files (its Optuna study and tables) without starting Ray, during a search or after it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from ctkd_tune.search.results import TrialStatus
from ctkd_tune.values import finite, plain

WIDTH = 100
NAME_WIDTH = 40
FAILED = (TrialStatus.DIVERGED, TrialStatus.ERROR)
FINISHED = (TrialStatus.COMPLETED, TrialStatus.PRUNED, *FAILED)
OPTUNA_STATES = {"RUNNING": TrialStatus.RUNNING, "WAITING": TrialStatus.PENDING, "COMPLETE": TrialStatus.COMPLETED,
                 "PRUNED": TrialStatus.PRUNED, "FAIL": TrialStatus.ERROR}
"""A study trial's state → its status, for trials the searcher left no "status" attribute on."""


@dataclass
class TrialRow:
    """One trial's line: name, state (pending | running | completed | pruned | diverged | error | interrupted),
    its last step of steps, and its latest val/ppl, τ and λ (None when not reported yet)."""
    name: str
    state: str
    step: int
    steps: int
    val_ppl: float | None = None
    tau: float | None = None
    lam: float | None = None


def render(rows: Iterable[TrialRow], *, elapsed_s: float | None, step_rate: float | None, num_samples: int | None,
           max_t: int, title: str = "search") -> str:
    """The header (done / pruned / failed / running, best so far, elapsed, ETA) and one line per trial."""
    rows = list(rows)
    counts = {state.value: sum(r.state == state for r in rows) for state in TrialStatus}
    failed = counts["diverged"] + counts["error"]
    done = counts["completed"] + counts["pruned"] + failed
    total = max(num_samples or 0, len(rows))
    to_start = total - len(rows) + counts["pending"]
    head = f"{title}: {done}/{total} done ({counts['completed']} completed, {counts['pruned']} pruned, " \
           f"{failed} failed), {counts['running']} running"
    if counts["interrupted"]:
        head += f", {counts['interrupted']} interrupted"
    if to_start:
        head += f", {to_start} to start"
    info = []
    best = best_row(rows)
    if best is not None:
        info.append(f"best val/ppl {best.val_ppl:.2f} ({best.name}{'' if best.state == 'completed' else ', partial'})")
    if elapsed_s is not None:
        info.append(f"elapsed {duration(elapsed_s)}")
    remaining = sum(max(0, r.steps - r.step) for r in rows if r.state not in FINISHED) + \
        (total - len(rows)) * max_t
    if remaining == 0 and done == total:
        info.append("finished")
    elif step_rate and step_rate > 0:
        info.append(f"ETA ≤ {duration(remaining / step_rate)}")
    lines = [head[:WIDTH]]
    if info:
        lines.append(" · ".join(info)[:WIDTH])
    lines.append(f"  {'trial':<{NAME_WIDTH}} {'state':<11} {'step':>9} {'val/ppl':>9} {'τ':>6} {'λ':>6}")
    for r in sorted(rows, key=_order):
        lines.append(f"  {_fit(r.name):<{NAME_WIDTH}} {r.state:<11} {f'{r.step}/{r.steps}':>9} "
                     f"{_fmt(r.val_ppl, 9, 2)} {_fmt(r.tau, 6, 2)} {_fmt(r.lam, 6, 2)}")
    return "\n".join(lines)


def best_row(rows: Iterable[TrialRow]) -> TrialRow | None:
    """The lowest val/ppl among completed trials; before any completes, among the others that did not fail."""
    rows = [r for r in rows if finite(r.val_ppl) and r.state not in FAILED]
    completed = [r for r in rows if r.state == TrialStatus.COMPLETED]
    pool = completed or rows
    return min(pool, key=lambda r: r.val_ppl) if pool else None


def signature(rows: Iterable[TrialRow]) -> tuple:
    """What makes a new table worth printing at once: the set of trials and their states."""
    return tuple(sorted((r.name, r.state) for r in rows))


def should_print(last_signature: tuple | None, rows: list[TrialRow], since_last_s: float | None,
                 period_s: float = 30.0, changed: bool = True) -> bool:
    """Print when a trial starts or ends, or when results arrived and `period_s` passed since the last table."""
    if last_signature is None or since_last_s is None or signature(rows) != last_signature:
        return True
    return changed and since_last_s >= period_s


def duration(seconds: float) -> str:
    """2h05m, 3m10s, 42s."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


# --- from an experiment's files (`ctkd-tune status`) -------------------------------------------------------------

def status_from_files(directory: str | Path, now: float | None = None) -> str:
    """The table of results/NAME from search.json, optuna.db and (when written) curves.parquet; no Ray."""
    import time

    directory = Path(directory)
    state_file = directory / "search.json"
    if not state_file.is_file():
        from ctkd_tune.config import ConfigError

        raise ConfigError(f"--experiment {directory}: no search.json (not a `ctkd-tune search` folder)")
    state = json.loads(state_file.read_text())
    max_t = int(state["settings"]["max_t"])
    num_samples = sum(int(run.get("num_samples") or 0) for run in state.get("runs", []))
    trials = _study_trials(directory, state["name"])
    curves = _latest_curves(directory)
    rows = [_row_from_study(t, max_t, curves.get(t.number, {})) for t in trials]
    times = [t.datetime_start.timestamp() for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete.timestamp() for t in trials if t.datetime_complete is not None]
    alive = driver_alive(directory)
    if alive is False:  # the search ended (or was killed) with these trials unfinished
        for r in rows:
            if r.state in (TrialStatus.RUNNING, TrialStatus.PENDING):
                r.state = TrialStatus.INTERRUPTED
    running = any(r.state == TrialStatus.RUNNING for r in rows)
    elapsed = None
    if times:
        last = (now or time.time()) if running else max(ends or times)
        elapsed = last - min(times)
    steps_done = sum(r.step for r in rows)
    rate = steps_done / elapsed if elapsed and steps_done else None
    return render(rows, elapsed_s=elapsed, step_rate=rate, num_samples=num_samples, max_t=max_t,
                  title=f"{state['name']} ({'running' if running else 'not running'})")


def driver_alive(directory: Path) -> bool | None:
    """Whether the process holding results/NAME/.lock (the search's driver) still runs on this host; None when
    there is no lock file or it names another host (then the study's RUNNING trials are shown as running)."""
    import os
    import socket

    try:
        holder = json.loads((directory / ".lock").read_text())
        pid, host = int(holder["pid"]), holder["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _study_trials(directory: Path, name: str) -> list:
    import optuna

    db = directory / "optuna.db"
    if not db.is_file():
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []


def _latest_curves(directory: Path) -> dict[int, dict[str, Any]]:
    """Per Optuna trial number: its last report in curves.parquet (τ, λ, step), if the table exists yet."""
    path = directory / "curves.parquet"
    if not path.is_file():
        return {}
    import pandas as pd

    frame = pd.read_parquet(path)
    if not len(frame) or "optuna_trial" not in frame:
        return {}
    frame = frame.dropna(subset=["optuna_trial"]).sort_values(["optuna_trial", "step"], kind="stable")
    return {int(number): {k: plain(v) for k, v in group.iloc[-1].items()}
            for number, group in frame.groupby("optuna_trial")}


def _row_from_study(trial, max_t: int, curve: dict[str, Any]) -> TrialRow:
    from ctkd_tune.search.names import trial_name

    values = trial.intermediate_values  # {step: val/ppl}, reported at every evaluation
    step = max(values) if values else 0
    if finite(curve.get("step")) and curve["step"] > step:
        step = int(curve["step"])
    ppl = values[max(values)] if values else curve.get("val/ppl")
    state = trial.user_attrs.get("status") or OPTUNA_STATES.get(trial.state.name, TrialStatus.ERROR)
    if trial.state.name == "COMPLETE" and trial.value is not None:
        ppl = trial.value
    return TrialRow(trial_name(trial.number, trial.params), state, int(step), max_t, ppl,
                    curve.get("ctkd/temperature"), curve.get("ctkd/lambda"))


def _order(row: TrialRow) -> tuple:
    digits = "".join(ch for ch in row.name.split("-", 1)[0] if ch.isdigit())
    return (int(digits) if digits else 10 ** 9, row.name)


def _fit(name: str) -> str:
    return name if len(name) <= NAME_WIDTH else name[:NAME_WIDTH - 1] + "…"


def _fmt(value: float | None, width: int, digits: int) -> str:
    return f"{value:>{width}.{digits}f}" if finite(value) else f"{'–':>{width}}"
