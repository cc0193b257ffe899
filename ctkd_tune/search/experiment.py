"""Open a search's result folder (`results/NAME/`) for `validate`, `export` and `report`: its tables, never Ray's.

    exp = open_experiment("results/ctkd-search")   # ConfigError (one line) if it is not a usable experiment
    exp.trials, exp.curves, exp.completed          # pandas frames of trials.parquet / curves.parquet
    exp.validation                                 # validation.parquet, if `ctkd-tune validate` ran

Every problem is found here, before anything is written: a missing folder, no trials.parquet, an unreadable or
empty table (with the command that rebuilds it), no completed trial. A search that did not finish (interrupted, or
killed) is used for what it finished, with a note saying how to continue it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctkd_tune.config import ConfigError
from ctkd_tune.search.results import UNFINISHED, TrialStatus

TRIALS, CURVES = "trials.parquet", "curves.parquet"
VALIDATION, VALIDATION_CURVES, VALIDATION_PLAN = "validation.parquet", "validation_curves.parquet", "validation.json"


@dataclass
class Experiment:
    directory: Path
    name: str
    trials: Any  # pandas DataFrame, one row per trial
    curves: Any  # one row per report (empty frame if curves.parquet is missing)
    validation: Any | None  # one row per validation run, or None

    @property
    def completed(self):
        """Trials that ran to train.steps with a finite final val/ppl."""
        t = self.trials
        return t[(t["status"] == TrialStatus.COMPLETED) & t["final_val_ppl"].notna()]

    def searched_params(self) -> list[str]:
        """The searched knobs: from search.json when present, else the config columns that vary across trials."""
        state = self.directory / "search.json"
        if state.is_file():
            try:
                params = json.loads(state.read_text())["settings"]["params"]
                return [p for p in params if p in self.trials]
            except (ValueError, KeyError, TypeError):
                pass
        config_cols = [c for c in self.trials.columns if "." in c and c.split(".", 1)[0] in _SECTIONS]
        return [c for c in config_cols if self.trials[c].astype(str).nunique(dropna=False) > 1]

    def plan(self) -> dict[str, Any] | None:
        path = self.directory / VALIDATION_PLAN
        return json.loads(path.read_text()) if path.is_file() else None


_SECTIONS = ("model", "data", "train", "loss", "temperature", "schedule", "checks")


def open_experiment(path: str | Path) -> Experiment:
    """Load results/NAME/; raise ConfigError naming the problem if it holds no completed trial."""
    import pandas as pd

    directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(f"--experiment {path}: no such directory (expected results/NAME of `ctkd-tune search`)")
    trials = read_table(directory / TRIALS, required=True)
    if not len(trials):
        raise ConfigError(f"--experiment {path}: {TRIALS} holds no trials")
    for column in ("status", "final_val_ppl", "trial_id"):
        if column not in trials:
            raise ConfigError(f"--experiment {path}: {TRIALS} has no column '{column}'")
    curves = read_table(directory / CURVES)
    exp = Experiment(directory.resolve(), directory.resolve().name, trials,
                     curves if curves is not None else pd.DataFrame(), read_table(directory / VALIDATION))
    unfinished = int(trials["status"].isin(UNFINISHED).sum())
    if not len(exp.completed):
        counts = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
        raise ConfigError(f"--experiment {path}: no completed trials ({counts})"
                          + (f"; continue the search with `{resume_command(exp.directory)}`" if unfinished else ""))
    if unfinished:
        print(f"ctkd-tune: note: search {exp.name} did not finish ({unfinished} trials interrupted or still running):"
              f" using its {len(exp.completed)} completed trials; continue it with `{resume_command(exp.directory)}`",
              file=sys.stderr)
    return exp


def resume_command(directory: Path) -> str:
    """The command that continues the search whose results are in `directory` (results/NAME)."""
    where = "" if directory.parent == Path("results").resolve() else f" --results-dir {directory.parent}"
    return f"ctkd-tune search --name {directory.name} --resume{where}"


def read_table(path: Path, required: bool = False):
    """A Parquet file as a DataFrame; None if absent (ConfigError if `required`, or if unreadable)."""
    import pandas as pd

    search = (path.parent / "search.json").is_file() and path.name in (TRIALS, CURVES)
    rebuild = f"ctkd-tune search --name {path.parent.name} --rebuild-tables" + (
        "" if path.parent.parent.resolve() == Path("results").resolve() else f" --results-dir {path.parent.parent}")
    if not path.is_file():
        if required and search:
            raise ConfigError(f"--experiment {path.parent}: no {path.name} yet: the search has not finished a trial"
                              f" (continue it with `{resume_command(path.parent.resolve())}`, or `{rebuild}`)")
        if required:
            raise ConfigError(f"--experiment {path.parent}: no {path.name} (is it a results/NAME folder of "
                              "`ctkd-tune search`?)")
        return None
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a truncated or foreign file
        hint = f"; rebuild it with `{rebuild}`" if search else ""
        raise ConfigError(f"{path}: unreadable Parquet file ({type(err).__name__}){hint}") from None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A Parquet file as plain Python rows (ints stay ints, nulls are None): for rebuilding configs exactly."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
