"""A search's folder, results/NAME/: its state file (search.json), its Optuna study (optuna.db) and its tables.

    state = read_state(directory / "search.json")     # ConfigError if damaged, or if the folder was renamed
    storage = open_storage(directory)                  # ConfigError if optuna.db is damaged
    rebuild_search_tables(directory, state, storage)   # trials/curves.parquet from the study + trial folders

The tables are written three ways, all through `results.build_tables`: while the search runs (`live_record` of
Tune's trials, refreshed by `searcher.TableWriter` through `refresh_tables`), once it ends (`final_tables`, from
Ray's ResultGrid), and on demand or on a resume that finds them damaged (`rebuild_search_tables`, from Ray's trial
folders on disk).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from ctkd_tune.config import ConfigError, from_dict
from ctkd_tune.search.settings import StudySettings
from ctkd_tune.search.results import (OPTUNA_TRIAL_KEY, UNFINISHED, TrialRecord, TrialStatus, build_tables,
                                      record_from_dir, summary_table, write_best_config, write_tables)


@dataclass
class SearchResult:
    directory: Path
    trials: Any  # pandas DataFrame, as in trials.parquet
    curves: Any
    best_config: Path | None
    interrupted: bool


def read_state(path: Path) -> dict[str, Any]:
    """search.json, its "settings" read back as `StudySettings`; a folder moved elsewhere keeps working (its default
    Ray storage moves with it), a folder renamed is refused (its study and Ray runs carry the old name)."""
    try:
        state = json.loads(path.read_text())
        name, runs = state["name"], state["runs"]
        state["base"], state["settings"]  # noqa: B018 (the keys a search needs)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not a search state file ({type(err).__name__}: {err})") from None
    state["settings"] = StudySettings.from_dict(state["settings"], str(path))
    if name != path.parent.name:
        raise ConfigError(f"{path.parent} holds the search {name!r} (renamed?): its study and Ray runs carry that "
                          f"name; put it back in a folder named {name}")
    for run in runs:
        default = Path(run["storage_path"])
        if "://" not in run["storage_path"] and (default.parent.name, default.name) == (name, "ray"):
            run["storage_path"] = str(path.parent / "ray")  # the default storage, inside the (moved) folder
    return state


def study_is_empty(storage, name: str) -> bool:
    """No trial yet but the ones a dead driver proposed (they are re-attached): the known points still run."""
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return True
    return all(t.state == optuna.trial.TrialState.RUNNING and "status" not in t.user_attrs for t in trials)


def any_unfinished(records: list[TrialRecord], storage, name: str) -> bool:
    """Whether a trial of this run still waits for --resume (Tune did not end it)."""
    numbers = {(r.config or {}).get(OPTUNA_TRIAL_KEY) for r in records}
    study = optuna.load_study(study_name=name, storage=storage)
    return any(not t.state.is_finished() for t in study.get_trials(deepcopy=False) if t.number in numbers)


def check_no_unfinished_trials(storage, name: str) -> None:
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return
    running = [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    if running:
        raise ConfigError(f"search {name!r} has unfinished trials {running}: continue it first with "
                          f"`ctkd-tune search --name {name} --resume`")


def ray_storage(storage_path: str | None, directory: Path) -> str:
    """Ray's storage: a URI as given, a local path made absolute, or results/NAME/ray by default."""
    if not storage_path:
        return str(directory / "ray")
    return storage_path if "://" in storage_path else str(Path(storage_path).resolve())


def open_storage(directory: Path):
    """results/NAME/optuna.db as Optuna storage; a damaged file is a one-line error."""
    path = directory / "optuna.db"
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{path}")  # sqlite:////ABS/optuna.db
        storage.get_all_studies()
    except Exception as err:  # sqlalchemy's DatabaseError, optuna's version checks, ...
        raise ConfigError(f"{path}: unreadable Optuna database ({type(err).__name__}); restore it from a copy, "
                          "or start a new --name") from None
    return storage


def write_search_tables(directory, records, base_cfg, fixed: StudySettings, storage, name, run_name, live=False):
    study = optuna.load_study(study_name=name, storage=storage)
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    trials, curves = build_tables(records, base_cfg.to_dict(), ppl_threshold=fixed.ppl_threshold,
                                  runaway_patience=fixed.runaway_patience, optuna_states=states, run=run_name,
                                  live=live)
    return write_tables(directory, trials, curves)


def refresh_tables(directory, base_cfg, fixed: StudySettings, storage, name, run_name, trials) -> None:
    """The tables of Tune's `trials` while the search runs (`searcher.TableWriter` calls it; picklable as a
    `functools.partial` of everything but `trials`)."""
    write_search_tables(directory, [live_record(t) for t in trials], base_cfg, fixed, storage, name, run_name,
                        live=True)


def final_tables(directory, records, base_cfg, fixed: StudySettings, storage, name, run_name,
                 stopped) -> SearchResult:
    """The tables once a run ended, with a summary and what to do next."""
    trials, curves = write_search_tables(directory, records, base_cfg, fixed, storage, name, run_name)
    best = write_best_config(directory, trials)
    interrupted = stopped or (bool(len(trials)) and bool((trials["status"] == TrialStatus.INTERRUPTED).any()))
    print(summary_table(trials, fixed.params))
    print(f"results: {directory}/trials.parquet, curves.parquet" + (f", {best.name}" if best else ""))
    if interrupted:
        print(f"ctkd-tune: search interrupted; continue it with: ctkd-tune search --name {name} --resume"
              + (f" --results-dir {directory.parent}" if directory.parent != Path("results").resolve() else ""))
    elif best:
        print(f"next: ctkd-tune validate --experiment {directory}   (the best trials × fresh seeds next to the "
              "fallbacks), then ctkd-tune report / export")
    return SearchResult(directory, trials, curves, best, interrupted)


def live_record(trial) -> TrialRecord:
    """A Tune trial → TrialRecord, from the files Tune keeps for it: on the driver (fresher while it runs) or in
    the experiment's storage (the only copy of a trial an earlier driver finished); the one with more reports."""
    error = trial.status == "ERROR"
    folders = dict.fromkeys(str(p) for p in (trial.local_path, trial.path) if p and "://" not in str(p))
    records = [r for r in (record_from_dir(folder, error=error) for folder in folders) if r is not None]
    record = max(records, key=lambda r: len(r.reports), default=None)
    if record is None:
        record = TrialRecord(dict(trial.config), dict(trial.last_result or {}), [], None, str(trial.path))
    record.path = str(trial.path)
    record.metrics.setdefault("trial_id", trial.trial_id)  # the folder is named after the trial, not its id
    return record


def rebuild_search_tables(directory: Path, state: dict[str, Any], storage) -> SearchResult:
    """trials.parquet / curves.parquet from the study and every run's trial folders (params.json, result.json)."""
    study = optuna.load_study(study_name=state["name"], storage=storage)
    errored = {t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("status") == TrialStatus.ERROR}
    base_cfg, fixed = from_dict(state["base"]), state["settings"]
    trials, curves = [], []
    for run in state["runs"]:
        folder = Path(run["storage_path"]) / run["name"]
        if "://" in run["storage_path"]:
            raise ConfigError(f"--rebuild-tables reads the trial folders locally; {run['storage_path']} is remote")
        records = []
        for trial_dir in sorted(folder.glob("*/params.json")):
            config = json.loads(trial_dir.read_text())
            record = record_from_dir(trial_dir.parent, error=config.get(OPTUNA_TRIAL_KEY) in errored)
            if record is not None:
                records.append(record)
        rows, curve_rows = build_tables(records, base_cfg.to_dict(), ppl_threshold=fixed.ppl_threshold,
                                        runaway_patience=fixed.runaway_patience, run=run["name"],
                                        optuna_states={t.number: t.state.name
                                                       for t in study.get_trials(deepcopy=False)})
        trials += rows
        curves += curve_rows
    trials, curves = write_tables(directory, trials, curves, merge=False)
    best = write_best_config(directory, trials)
    print(f"ctkd-tune: rebuilt {directory}/trials.parquet ({len(trials)} trials) and curves.parquet")
    interrupted = bool(len(trials)) and bool(trials["status"].isin(UNFINISHED).any())
    return SearchResult(directory, trials, curves, best, interrupted)


def tables_readable(directory: Path) -> bool:
    import pyarrow.parquet as pq

    for name in ("trials.parquet", "curves.parquet"):
        try:
            if (directory / name).exists():
                pq.read_metadata(directory / name)
        except Exception:  # pyarrow raises several types for a truncated or foreign file
            return False
    return True
