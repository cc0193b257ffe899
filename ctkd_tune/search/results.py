"""The result tables of a search, built from Ray's ResultGrid; `validate`, `export` and `report` read only these.

    results/NAME/trials.parquet    one row per trial: its name (ctkd_tune.search.names), the flattened config
                                   (Config.flat() names; lists as JSON),
                                   final/best val/ppl, final temperature and λ, steps, status, stop_reason,
                                   optuna_trial and optuna_state, wall time, trial id, temperature_drift
                                   (`checks.temperature_drift` over the trial's reports, from its first evaluation)
    results/NAME/curves.parquet    one row per report: trial_id, optuna_trial, step, status and the metrics
    results/NAME/best_config.yaml  the best completed trial's full config, runnable by `ctkd-tune distill --config`

Status of a trial: completed (ran to train.steps) | pruned (stopped early by ASHA) | diverged (non-finite loss,
val/ppl above the threshold, or temperature runaway; stop_reason says which) | error (the trial raised) |
interrupted (the search stopped before the trial ended; `--resume` continues it) | running (the tables were written
while the search ran: they are refreshed as trials end and at least every minute): `TrialStatus`, written as its
string. `trial_outcome` is the one place that decides it: the searcher tells Optuna the same verdict (COMPLETE |
PRUNED | FAIL), the live console shows it and the divergence stopper stops on it. A diverged trial's last report
carries status "diverged" and, as a finite stand-in for its perplexity, the vocabulary size (a uniform guess);
final/best val/ppl only use real evaluations. No table holds NaN.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Iterable

from ctkd_tune.config import Config, dump_yaml, from_dict
from ctkd_tune.io import atomic_write_parquet
from ctkd_tune.run.checks import temperature_drift
from ctkd_tune.search.names import trial_name
from ctkd_tune.values import error_line, finite, plain

OPTUNA_TRIAL_KEY = "optuna_trial"
"""Key the searcher adds to each trial's config: the Optuna trial number (not a config override)."""
CURVE_METRICS = ["ref/teacher_val_ppl", "ref/student_val_ppl_start", "val/ppl", "val/kl", "val/top1_agreement",
                 "val/loss", "train/loss", "train/kd_loss",
                 "train/ce_loss", "train/lr", "ctkd/temperature", "ctkd/temperature_min", "ctkd/temperature_max",
                 "ctkd/lambda", "ctkd/evals_at_bound", "wall_time_s", "reported_at"]
TRIAL_KEYS = ["trial", "trial_id", "optuna_trial", "optuna_state", "run", "status", "stop_reason", "final_val_ppl",
              "best_val_ppl", "best_step", "final_val_kl", "final_top1_agreement", "final_temperature", "final_lambda",
              "temperature_drift", "teacher_val_ppl", "student_val_ppl_start", "steps", "wall_time_s", "path",
              "params"]  # then the config's dotted keys
CURVE_KEYS = ["trial", "trial_id", "optuna_trial", "step", "status", *CURVE_METRICS]


class TrialStatus(StrEnum):
    """A trial's status, as the tables, the study's user attributes and the console write it (the value)."""
    COMPLETED = "completed"  # ran to train.steps
    PRUNED = "pruned"  # stopped early by ASHA
    DIVERGED = "diverged"  # non-finite loss, val/ppl above the threshold, or temperature runaway
    ERROR = "error"  # the trial raised (or never ran)
    INTERRUPTED = "interrupted"  # the search stopped before the trial ended; --resume continues it
    RUNNING = "running"  # the tables were written while it ran
    PENDING = "pending"  # created, not started (the console only)


STATUSES = tuple(s for s in TrialStatus if s is not TrialStatus.PENDING)  # what a trials.parquet row can hold
UNFINISHED = (TrialStatus.RUNNING, TrialStatus.INTERRUPTED)  # rows of trials that have not ended
RAY_UNFINISHED = {"PENDING": TrialStatus.PENDING, "PAUSED": TrialStatus.PENDING, "RUNNING": TrialStatus.RUNNING}
"""Ray Tune's statuses of a trial that has not ended (TERMINATED and ERROR go through `trial_outcome`)."""


def divergence_reason(result: dict[str, Any], ppl_threshold: float, runaway_patience: int) -> str | None:
    """Why a report shows a diverged trial (non-finite loss, val/ppl above threshold, temperature runaway), or None."""
    if result.get("status") == TrialStatus.DIVERGED:
        return result.get("stop_reason") or "diverged"
    ppl, step = result.get("val/ppl"), result.get("step")
    if ppl is not None and ppl_threshold is not None and ppl > ppl_threshold:
        return f"val/ppl {ppl:.1f} above the divergence threshold {ppl_threshold:g} at step {step}"
    at_bound = result.get("ctkd/evals_at_bound") or 0
    if runaway_patience and at_bound >= runaway_patience:
        return (f"temperature runaway: T {result.get('ctkd/temperature', float('nan')):.3f} stuck at a bound for "
                f"{at_bound} evaluations (step {step})")
    return None


def trial_outcome(result: dict[str, Any] | None, error: bool, ppl_threshold: float,
                  runaway_patience: int) -> tuple[TrialStatus, str | None]:
    """(status, stop_reason) of a finished trial from its last report (None: it was removed before it ever ran):
    completed | pruned | diverged | error. The one place that decides it: the searcher (what Optuna is told), the
    tables, the live console and the divergence stopper (`divergence_reason`) all ask here.

    The worker reports facts, not outcomes: a report's "status" is its run's (running; completed once step ==
    train.steps; diverged on the run's last, finite stand-in report).
    """
    if error:
        return TrialStatus.ERROR, "the trial raised an exception"
    if result is None:
        return TrialStatus.ERROR, "stopped before it ran"
    if not result or "step" not in result:
        return TrialStatus.ERROR, "the trial ended before its first evaluation"
    reason = divergence_reason(result, ppl_threshold, runaway_patience)
    if reason:
        return TrialStatus.DIVERGED, reason
    if result.get("status") == TrialStatus.COMPLETED:
        return TrialStatus.COMPLETED, None
    return (TrialStatus.PRUNED,
            f"stopped early by ASHA at step {result['step']} (val/ppl {result.get('val/ppl', 0):.2f})")


def live_status(ray_status: str, result: dict[str, Any] | None, ppl_threshold: float,
                runaway_patience: int) -> TrialStatus:
    """The status of a trial Ray Tune holds (its `Trial.status` and last result), for the live console."""
    if ray_status in RAY_UNFINISHED:
        return RAY_UNFINISHED[ray_status]
    return trial_outcome(result or {}, ray_status == "ERROR", ppl_threshold, runaway_patience)[0]


# --- building the tables -----------------------------------------------------------------------------------------

@dataclass
class TrialRecord:
    """What the tables need of one Tune trial, wherever it comes from (a ResultGrid, a live Trial, its folder)."""
    config: dict[str, Any]  # the searcher's params (and OPTUNA_TRIAL_KEY)
    metrics: dict[str, Any]  # the last report
    reports: list[dict[str, Any]]  # every report, in order
    error: str | None  # the first line of the error, if the trial raised
    path: str


def record_from_result(result) -> TrialRecord:
    """A ray.tune.Result → TrialRecord."""
    frame = result.metrics_dataframe
    reports = frame.to_dict("records") if frame is not None and len(frame) else []
    return TrialRecord(dict(result.config or {}), dict(result.metrics or {}), reports,
                       None if result.error is None else error_line(result.error), str(result.path))


def record_from_dir(path: str | Path, error: bool = False) -> TrialRecord | None:
    """A Tune trial folder (params.json, result.json: one JSON report per line) → TrialRecord; None if no params.

    A line cut short by a crash is skipped. `error`: the trial raised (its error.txt gives the line)."""
    path = Path(path)
    try:
        config = json.loads((path / "params.json").read_text())
    except (OSError, ValueError):
        return None
    reports = []
    if (path / "result.json").is_file():
        for line in (path / "result.json").read_text().splitlines():
            try:
                report = json.loads(line)
            except ValueError:
                continue
            report.pop("config", None)
            reports.append(report)
    message = None
    if error:
        text = (path / "error.txt").read_text() if (path / "error.txt").is_file() else ""
        message = next((l for l in reversed(text.splitlines()) if l.strip() and not l.startswith(" ")), "error")
    return TrialRecord(config, reports[-1] if reports else {}, reports, message, str(path))


def build_tables(records: Iterable[Any], base: dict[str, Any], *, ppl_threshold: float,
                 runaway_patience: int, optuna_states: dict[int, str] | None = None, run: str = "",
                 live: bool = False) -> tuple[list[dict], list[dict]]:
    """Trial records (or Ray Tune Results) → (trial rows, curve rows). A trial the study holds as unfinished is
    "running" while the search runs (`live`), else "interrupted"."""
    from ctkd_tune.search.spaces import trial_config

    optuna_states = optuna_states or {}
    trials, curves = [], []
    for record in records:
        if not isinstance(record, TrialRecord):  # a ray.tune.Result
            record = record_from_result(record)
        params = dict(record.config or {})
        number = params.pop(OPTUNA_TRIAL_KEY, None)
        last = dict(record.metrics or {})
        trial_id = last.get("trial_id") or Path(str(record.path)).name
        reports = _reports(record.reports)
        evals = [r for r in reports if r.get("status") != TrialStatus.DIVERGED and finite(r.get("val/ppl"))]
        best = min(evals, key=lambda r: r["val/ppl"]) if evals else {}
        state = optuna_states.get(number)
        status, reason = trial_outcome(last, record.error is not None, ppl_threshold, runaway_patience)
        if record.error is not None:
            reason = record.error
        elif state in ("RUNNING", "WAITING"):
            status, reason = ((TrialStatus.RUNNING, "running when the tables were written") if live else
                              (TrialStatus.INTERRUPTED,
                               "the search stopped before this trial ended (continue with --resume)"))
        name = trial_name(number, params) if number is not None else str(trial_id)  # as in the live table
        row = {
            "trial": name, "trial_id": trial_id, "optuna_trial": number, "optuna_state": state, "run": run,
            "status": status.value, "stop_reason": reason,
            "final_val_ppl": evals[-1]["val/ppl"] if evals else None,
            "best_val_ppl": best.get("val/ppl"), "best_step": best.get("step"),
            "final_val_kl": evals[-1].get("val/kl") if evals else None,
            "final_top1_agreement": evals[-1].get("val/top1_agreement") if evals else None,
            "final_temperature": last.get("ctkd/temperature"), "final_lambda": last.get("ctkd/lambda"),
            "teacher_val_ppl": next((r["ref/teacher_val_ppl"] for r in reports if "ref/teacher_val_ppl" in r), None),
            "student_val_ppl_start": next((r["ref/student_val_ppl_start"] for r in reports
                                           if "ref/student_val_ppl_start" in r), None),
            "steps": last.get("step", 0), "wall_time_s": last.get("wall_time_s"), "path": str(record.path),
            "params": json.dumps(params, sort_keys=True),  # what the searcher chose; the rest is the base config
        }
        try:
            cfg = trial_config(base, params)
        except Exception:  # a trial whose params did not make a config (it errored): keep the base values
            cfg = from_dict(base)
        row["temperature_drift"] = temperature_drift(reports, cfg)
        config = cfg.flat()
        row.update({key: json.dumps(value) if isinstance(value, list) else value for key, value in config.items()})
        trials.append(row)
        curves += [{"trial": name, "trial_id": trial_id, "optuna_trial": number, "step": r.get("step"),
                    "status": r.get("status"),
                    **{key: r.get(key) for key in CURVE_METRICS if key in r}} for r in reports]
    return trials, curves


def _reports(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A trial's reports that are ours, one per (step, status), NaN cells dropped."""
    rows: dict[tuple, dict[str, Any]] = {}
    for record in records:
        clean = {k: plain(v) for k, v in record.items() if not isinstance(v, (dict, list))}
        clean = {k: v for k, v in clean.items() if v is not None}
        if "step" in clean:  # a retried trial may report a step twice: keep the last
            rows[(clean["step"], clean.get("status"))] = clean
    return list(rows.values())


def write_tables(directory: str | Path, trials: list[dict], curves: list[dict], merge: bool = True) -> tuple[Any, Any]:
    """Merge with the tables on disk (earlier runs of the experiment; by trial_id) and write both atomically;
    `merge=False` replaces them (a rebuild). One row per Optuna trial: a trial that a killed driver left behind and
    a resumed search ran again under a new Ray id keeps only its most advanced row (and that row's curve)."""
    import pandas as pd

    directory = Path(directory)
    frames = []
    for name, rows, sort in (("trials", trials, ["optuna_trial"]), ("curves", curves, ["optuna_trial", "step"])):
        new = _frame(rows) if rows else pd.DataFrame(columns=TRIAL_KEYS if name == "trials" else CURVE_KEYS)
        path = directory / f"{name}.parquet"
        if merge and path.is_file():
            old = pd.read_parquet(path)
            if len(new):
                old = old[~old["trial_id"].isin(set(new["trial_id"]))]
            new = pd.concat([old, new], ignore_index=True) if len(old) else new
        if name == "trials":
            new = _one_row_per_optuna_trial(new)
        elif len(new) and len(frames[0]):
            numbered = new["optuna_trial"].notna()
            new = new[~numbered | new["trial_id"].isin(set(frames[0]["trial_id"]))]
        if len(new):
            new = new.sort_values(sort, kind="stable", na_position="last").reset_index(drop=True)
        atomic_write_parquet(path, new)
        frames.append(new)
    return frames[0], frames[1]


def _one_row_per_optuna_trial(trials):
    """Of rows sharing an Optuna trial number, the most advanced one: finished before unfinished, then most steps,
    then the latest (the order rows were merged in: disk first, this run's last)."""
    import pandas as pd

    if not len(trials) or "optuna_trial" not in trials:
        return trials
    unfinished = trials["status"].isin(UNFINISHED) if "status" in trials else False
    steps = trials["steps"].fillna(0) if "steps" in trials else 0
    ranked = trials.assign(_unfinished=unfinished, _steps=steps, _order=range(len(trials)))
    ranked = ranked.sort_values(["_unfinished", "_steps", "_order"], ascending=[True, False, False], kind="stable")
    numbered = ranked["optuna_trial"].notna()
    kept = pd.concat([ranked[numbered].drop_duplicates("optuna_trial", keep="first"), ranked[~numbered]])
    return kept.sort_values("_order").drop(columns=["_unfinished", "_steps", "_order"])


def _frame(rows: list[dict[str, Any]]):
    """Rows → DataFrame; integer columns with gaps stay integers (Int64), so configs read back keep their ints."""
    import pandas as pd

    keys = list(dict.fromkeys(key for row in rows for key in row))
    columns = {}
    for key in keys:
        values = [row.get(key) for row in rows]
        present = [v for v in values if v is not None]
        is_int = present and all(isinstance(v, int) and not isinstance(v, bool) for v in present)
        columns[key] = pd.array(values, dtype="Int64") if is_int else pd.Series(values, dtype=object
                                                                               if not present else None)
    return pd.DataFrame(columns)


# --- best config, summary ---------------------------------------------------------------------------------------

def config_from_row(row: dict[str, Any]) -> Config:
    """A trials.parquet row → its full Config (the dotted columns; JSON lists and nulls decoded)."""
    nested: dict[str, dict[str, Any]] = {}
    for section, fields in Config().to_dict().items():
        for key in fields:
            if f"{section}.{key}" not in row:  # a field added after the run (e.g. loss.divergence): its default
                continue
            value = plain(row[f"{section}.{key}"])
            if isinstance(value, str) and value.startswith("["):
                value = json.loads(value)
            nested.setdefault(section, {})[key] = value
    return from_dict(nested)


def best_row(trials) -> dict[str, Any] | None:
    """The completed trial with the lowest final val/ppl (a frame of trials.parquet), or None."""
    done = trials[(trials["status"] == TrialStatus.COMPLETED) & trials["final_val_ppl"].notna()] if len(trials) else trials
    if not len(done):
        return None
    return done.sort_values("final_val_ppl", kind="stable").iloc[0].to_dict()


def write_best_config(directory: str | Path, trials) -> Path | None:
    """best_config.yaml of the best completed trial, opening with the command that runs it."""
    row = best_row(trials)
    if row is None:
        return None
    path = Path(directory) / "best_config.yaml"
    header = (f"ctkd-tune distill --config {path} --output runs/best\n"
              f"best completed trial {display_name(row)} (ray id {row['trial_id']}): "
              f"final val/ppl {row['final_val_ppl']:.3f}, T {row['final_temperature']:.3f}")
    dump_yaml(config_from_row(row), path, header=header)
    return path


def display_name(row: dict[str, Any]) -> str:
    """The trial's readable name; tables written before names existed get it from the number and params."""
    name = row.get("trial")
    if isinstance(name, str) and name:
        return name
    number = row.get("optuna_trial")
    if number is None or number != number:  # None or NaN
        return str(row.get("trial_id"))
    return trial_name(int(number), json.loads(row.get("params") or "{}"))


def summary_table(trials, params: list[str], limit: int = 10) -> str:
    """A short text table: counts by status, then the best trials with the searched knobs."""
    if not len(trials):
        return "no trials"
    counts = trials["status"].value_counts().to_dict()
    head = ", ".join(f"{counts[s]} {s}" for s in STATUSES if s in counts)
    short = {p: p.split(".", 1)[1] for p in params if p in trials}
    shown = trials.sort_values(["final_val_ppl"], na_position="last").head(limit)
    shown = shown.assign(trial=[display_name(r) for r in shown.to_dict("records")])
    shown = shown[["trial", "status", "final_val_ppl", "best_val_ppl", "final_temperature", "steps",
                   *short]].rename(columns={**short, "final_val_ppl": "val/ppl",
                                            "best_val_ppl": "best", "final_temperature": "T"})
    return f"{len(trials)} trials: {head}\n" + shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
