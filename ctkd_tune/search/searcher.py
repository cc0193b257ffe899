"""The Ray Tune pieces of `ctkd-tune search`: the Optuna searcher that tells the study the truth and keeps it
consistent across crashes, the divergence stopper, and the callback that keeps the tables on disk.

    searcher = CTKDOptunaSearch(space=space_fn, metric="val/ppl", mode="min", storage=storage, study_name=name,
                                ppl_threshold=1e4, runaway_patience=3)
    writer = TableWriter(partial(folder.refresh_tables, directory, base_cfg, fixed, storage, name, run_name))
    tune.RunConfig(stop=DivergenceStopper(1e4, 3), callbacks=[writer, CheckpointGuard()])

A study consistent with what ran: each Tune trial has exactly one Optuna trial, and no Optuna trial stays RUNNING
once its Tune trial ended. A driver killed with kill -9 leaves the study ahead of Ray's last snapshot of the
searcher; `restore` reconciles the two before any trial runs: trials the study finished are finished for the
searcher too (so a resumed trial never reports to a finished study trial), and RUNNING study trials that Tune no
longer knows ("orphans": proposed after the snapshot) are handed, with their parameters, to the next trials Tune
creates, so no parameter set is proposed twice; the sampler is reseeded so the snapshot's draws are not replayed.
The same kill can leave Ray's snapshot naming a checkpoint that `num_to_keep` deleted after it: `CheckpointGuard`
points such a trial at the newest whole checkpoint left in its folder (or none: it starts again) before it runs.

Everything these objects need comes through their constructors: Tune pickles them with the experiment, and on
`--resume` the driver builds them again for this folder and storage and the restored Tuner runs with those
(`compat.replace_restored_search`); the searcher's `restore` keeps its own storage over the snapshot's.
"""

from __future__ import annotations

import posixpath
import re
import shutil
import time
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import optuna
from ray import tune
from pyarrow import fs as pafs
from ray.tune.search.optuna import OptunaSearch

from ctkd_tune.run.checkpoint import STATE_FILE
from ctkd_tune.search.compat import (checkpoint_result, checkpoint_results, live_trial, searcher_finished,
                                     searcher_sampler, searcher_study, searcher_study_name, searcher_trials,
                                     set_checkpoint_results, set_searcher_study)
from ctkd_tune.search.results import OPTUNA_TRIAL_KEY, TrialStatus, divergence_reason, trial_outcome
from ctkd_tune.values import finite

ORPHAN_REASON = "the search's driver died before Ray Tune recorded this trial"
UNFINISHED = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)


class CTKDOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth: COMPLETE only for full runs, PRUNED if stopped early, FAIL if
    diverged or errored; intermediate values are indexed by training step; NaN never reaches the study.

    `storage` is the experiment's own: after a restore, whose snapshot may name another path (a folder moved
    elsewhere), the study is loaded again from it. OptunaSearch's own state is reached through `compat`."""

    def __init__(self, *args, storage=None, ppl_threshold: float, runaway_patience: int, adopt_orphans: bool = False,
                 **kwargs):
        super().__init__(*args, storage=storage, **kwargs)
        self.experiment_storage = storage
        self.ppl_threshold, self.runaway_patience = ppl_threshold, runaway_patience
        study = searcher_study(self)
        self._orphans = orphans(study, set()) if adopt_orphans and study is not None else []

    def restore(self, checkpoint_path: str) -> None:
        # this driver's storage (None for a searcher pickled before it had one): the snapshot replaces every attribute
        storage = getattr(self, "experiment_storage", None)
        super().restore(checkpoint_path)
        self.experiment_storage = storage
        if storage is not None:
            study = optuna.load_study(study_name=searcher_study_name(self), storage=storage,
                                      sampler=searcher_sampler(self))
            set_searcher_study(self, study, storage)
        self.reconcile()

    def reconcile(self) -> None:
        """Make the restored searcher agree with the study (see the module docstring)."""
        study, finished = searcher_study(self), searcher_finished(self)
        states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        live = set()
        for trial_id, ot_trial in searcher_trials(self).items():
            if states.get(ot_trial.number, optuna.trial.TrialState.FAIL) not in UNFINISHED:
                finished.add(trial_id)
            elif trial_id not in finished:
                live.add(ot_trial.number)
        self._orphans = orphans(study, live)
        searcher_sampler(self).reseed_rng()

    def suggest(self, trial_id: str) -> dict | None:
        trials = searcher_trials(self)
        if trial_id not in trials and self._orphans:  # re-attach: same Optuna trial, same params
            trials[trial_id] = live_trial(searcher_study(self), self._orphans.pop(0))
        config = super().suggest(trial_id)
        if config is not None:
            ot_trial = trials[trial_id]
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            config[OPTUNA_TRIAL_KEY] = ot_trial.number  # links the trials table to the study
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        trials = searcher_trials(self)
        if trial_id in searcher_finished(self) or trial_id not in trials:
            return
        self._report(trials[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trials = searcher_trials(self)
        if trial_id in searcher_finished(self) or trial_id not in trials:
            return
        ot_trial, study = trials[trial_id], searcher_study(self)
        status, reason = trial_outcome(result, error, self.ppl_threshold, self.runaway_patience)
        ot_trial.set_user_attr("status", status.value)
        ot_trial.set_user_attr("stop_reason", reason or "")
        try:
            if status is TrialStatus.COMPLETED:
                study.tell(ot_trial, result[self.metric], state=optuna.trial.TrialState.COMPLETE)
            elif status is TrialStatus.PRUNED:
                self._report(ot_trial, result)  # the stopping report never reached on_trial_result
                study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        except Exception as err:  # never let the study break the search; the tables still record the trial
            print(f"ctkd-tune: optuna could not record trial {ot_trial.number}: {err}")
        searcher_finished(self).add(trial_id)

    def _report(self, ot_trial, result: dict) -> None:
        value, step = result.get(self.metric), result.get("step")
        if result.get("status") != TrialStatus.DIVERGED and finite(value) and finite(step):
            with warnings.catch_warnings():  # a resumed trial may repeat a step: optuna keeps the first, and warns
                warnings.simplefilter("ignore")
                ot_trial.report(value, int(step))


def orphans(study, live: set[int]) -> list:
    """The study's RUNNING trials that are not among `live` (the numbers of trials Tune will run). WAITING trials
    are known points not yet asked for: they stay queued."""
    running = (optuna.trial.TrialState.RUNNING,)
    return [t for t in study.get_trials(deepcopy=False, states=running) if t.number not in live]


def fail_orphans(study, live: set[int]) -> list[int]:
    """Mark unfinished study trials that no Tune trial runs as FAIL (ORPHAN_REASON); their numbers."""
    failed = []
    for frozen in orphans(study, live):
        trial = live_trial(study, frozen)
        trial.set_user_attr("status", TrialStatus.ERROR.value)
        trial.set_user_attr("stop_reason", ORPHAN_REASON)
        study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
        failed.append(frozen.number)
    return failed


class DivergenceStopper(tune.Stopper):
    """Stops a trial whose report shows divergence (see `divergence_reason`) and records why."""

    def __init__(self, ppl_threshold: float, runaway_patience: int):
        self.ppl_threshold, self.runaway_patience = ppl_threshold, runaway_patience
        self.reasons: dict[str, str] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        reason = divergence_reason(result, self.ppl_threshold, self.runaway_patience)
        if reason and trial_id not in self.reasons:
            self.reasons[trial_id] = reason
            print(f"ctkd-tune: trial {trial_id} diverged: {reason}")
        return reason is not None

    def stop_all(self) -> bool:
        return False


class TableWriter(tune.Callback):
    """Rewrites trials.parquet / curves.parquet when a trial ends and at least every `period` seconds while trials
    run, so a crashed driver leaves the tables of what had finished. `refresh(trials)` writes them from Tune's
    trials (the driver's `folder.refresh_tables`, bound to its folder and study: picklable, since Tune pickles its
    callbacks with the experiment). `ended`: Tune's trials when the experiment ended (finished or interrupted),
    what the driver builds the final tables from; None until then."""

    def __init__(self, refresh: Callable[[list], None] | None, period: float = 60.0):
        self.refresh, self.period = refresh, period
        self.due, self.last, self.ended = False, time.monotonic(), None

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.due = True
        _remove_scratch(trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.due = True
        _remove_scratch(trial)

    def on_experiment_end(self, trials: list, **info) -> None:
        self.ended = list(trials)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if self.refresh is not None and (self.due or time.monotonic() - self.last >= self.period):
            self.due, self.last = False, time.monotonic()
            try:
                self.refresh(trials)
            except Exception as err:  # a failed refresh must not stop the search: the final write retries
                print(f"ctkd-tune: could not refresh the tables: {type(err).__name__}: {err}")


class CheckpointGuard(tune.Callback):
    """Before a resumed search starts its trials: a trial whose checkpoint (as Ray's snapshot names it) is gone
    resumes from the newest whole checkpoint in its folder, or from the start if there is none.

    Why it happens: registering a trial's checkpoint deletes the oldest beyond `num_to_keep`, and Ray's forced
    snapshot follows a moment later; a driver killed in between leaves a snapshot naming the deleted checkpoint,
    and Ray's restore of that trial then fails on every retry (the trial ends in ERROR)."""

    def __init__(self):
        self.checked = False

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self.checked:
            return
        self.checked = True
        for trial in trials:
            if trial.status in ("PENDING", "PAUSED") and trial.checkpoint is not None:
                repoint_missing_checkpoint(trial)


def repoint_missing_checkpoint(trial) -> str | None:
    """If `trial`'s latest checkpoint is gone, make the newest whole one in its folder (or none) its latest; what
    it resumes from now ("" for the start), or None if nothing was missing."""
    manager = trial.run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result
    if _exists(latest.checkpoint.filesystem, latest.checkpoint.path):
        return None
    storage, folder = latest.checkpoint.filesystem, posixpath.dirname(latest.checkpoint.path)
    entries = storage.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    names = sorted((e.base_name for e in entries if e.type == pafs.FileType.Directory
                    and re.fullmatch(r"checkpoint_\d+", e.base_name)), reverse=True)
    whole = next((n for n in names if _whole(storage, posixpath.join(folder, n))), None)
    replacement = None
    if whole is not None:
        replacement = checkpoint_result(tune.Checkpoint(posixpath.join(folder, whole), storage), latest.metrics)
    kept = [r for r in checkpoint_results(manager) if _exists(r.checkpoint.filesystem, r.checkpoint.path)]
    set_checkpoint_results(manager, kept + ([replacement] if replacement is not None else []), replacement)
    trial.run_metadata.invalidate_cache()
    print(f"ctkd-tune: trial {trial}: its checkpoint {posixpath.basename(latest.checkpoint.path)} is gone (deleted "
          f"after Ray's last snapshot); it resumes from {whole or 'the start'}")
    return whole or ""


def _exists(storage, path: str) -> bool:
    return storage.get_file_info(path).type != pafs.FileType.NotFound


def _whole(storage, folder: str) -> bool:
    """A checkpoint folder whose state file was written to the end (a kill can cut a copy short): on this machine
    its zip directory, which torch.save writes last, must read; elsewhere it must not be empty."""
    state = storage.get_file_info(posixpath.join(folder, STATE_FILE))
    if state.type != pafs.FileType.File or not state.size:
        return False
    if isinstance(storage, pafs.LocalFileSystem):
        return zipfile.is_zipfile(posixpath.join(folder, STATE_FILE))
    return True


def _remove_scratch(trial) -> None:
    """A trial stopped early (ASHA, divergence) is killed before its own clean-up runs: remove its scratch space
    (trainables.SCRATCH, inside its trial folder) from here when that folder is on this machine."""
    for folder in (trial.path, trial.local_path):
        if folder and "://" not in str(folder):
            shutil.rmtree(Path(folder) / "ctkd-scratch", ignore_errors=True)
