"""Every private Ray and Optuna access of ctkd-tune, one function each, and the versions they were checked on.

    disconnect_session = local_session_dir()          # before ray.shutdown(): the local Ray's /tmp/ray/session_*
    live = live_trial(study, frozen)                  # an optuna.Trial handle on a RUNNING study trial

Each function names the public API that is missing. `tests/test_compat.py` has one test per function, named after
it, that fails with the function's name when an upgrade removes or changes what it reaches into; pyproject.toml
bounds ray and optuna to the versions these were checked on (TESTED). Nothing else in ctkd-tune may touch a
`_private` attribute of either library: `grep -rn "\\._[a-z]" ctkd_tune/search trainables` finds only this file
(and CTKDOptunaSearch's own attributes).
"""

from __future__ import annotations

from typing import Any

TESTED = {"ray": "2.60.0", "optuna": "5.1.0"}
"""The versions every access below was read and tested against (pyproject.toml's upper bounds follow them)."""

RAY_STORAGE_LOGGER = "ray.train._internal.storage"
"""The logger that prints "Checkpoint successfully created" at every report (no public switch for it)."""


# --- Ray: the local cluster -----------------------------------------------------------------------------------

def keep_ray_node_local() -> None:
    """Make an already imported Ray take 127.0.0.1 as its node IP. Missing public API: the environment variable
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is read once, at import, into `ray._private.ray_constants`."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def local_session_dir() -> str | None:
    """The session folder of the head node this process started (None when it joined one). Missing public API:
    Ray gives no session path of a running head node (`ray._private.worker._global_node`)."""
    import ray

    node = ray._private.worker._global_node
    return node.get_session_dir_path() if node is not None and node.head else None


# --- Ray Tune: trainables, checkpoints, restore ---------------------------------------------------------------

def wrap_function_trainable(trainable) -> type:
    """The class Tune runs a function trainable as (to subclass it, e.g. for the actor's repr). Missing public
    API: Tune converts functions inside `Tuner` and exports no converter (`function_trainable.wrap_function`)."""
    from ray.tune.trainable.function_trainable import wrap_function

    return wrap_function(trainable)


def checkpoint_result(checkpoint, metrics: dict[str, Any]):
    """A checkpoint manager's entry (checkpoint + the metrics reported with it). Missing public API: the entry
    type `ray.train._internal.session._TrainingResult` is private."""
    from ray.train._internal.session import _TrainingResult

    return _TrainingResult(checkpoint=checkpoint, metrics=metrics)


def set_checkpoint_results(manager, results: list, latest) -> None:
    """Replace what a trial's checkpoint manager holds: `results` (what later deletions walk) and `latest` (what
    `trial.checkpoint` resumes from). Missing public API: the manager only registers new checkpoints."""
    manager._checkpoint_results = list(results)
    manager._latest_checkpoint_result = latest


def checkpoint_results(manager) -> list:
    """Every checkpoint a trial's manager still holds, oldest first. Missing public API: the manager exposes only
    the best (`best_checkpoint_results`, sorted by score) and the latest."""
    return list(manager._checkpoint_results)


def replace_restored_search(tuner, search_alg, callbacks: list) -> bool:
    """Run a restored Tuner with the driver's own searcher and callbacks instead of those tuner.pkl unpickled (the
    first driver's, holding its paths). The searcher then restores its state from the experiment's snapshot as
    usual. Missing public API: `Tuner.restore` takes neither a TuneConfig nor a RunConfig. False (nothing replaced)
    for a Tuner that runs remotely (ray://): its pickled searcher and callbacks are used as they are."""
    internal = getattr(tuner, "_local_tuner", None)
    if internal is None:
        return False
    internal._tune_config.search_alg = search_alg
    internal._run_config.callbacks = list(callbacks)
    return True


# --- Optuna and Ray's OptunaSearch ----------------------------------------------------------------------------

def live_trial(study, frozen):
    """A writable `optuna.Trial` on a study trial that is still RUNNING (to set attributes, report, tell). Missing
    public API: `study.ask()` only makes new trials; the storage id of a FrozenTrial (`_trial_id`) is private."""
    import optuna

    return optuna.Trial(study, frozen._trial_id)


def searcher_study(searcher):
    """The optuna.Study an OptunaSearch asks and tells. Missing public API: OptunaSearch keeps it in `_ot_study`."""
    return searcher._ot_study


def set_searcher_study(searcher, study, storage) -> None:
    """Point an OptunaSearch at `study`, held in `storage` (its experiment's, after a restore put back the pickled
    one). Missing public API: the study and its storage are set once, in the constructor."""
    searcher._ot_study = study
    searcher._storage = storage


def searcher_study_name(searcher) -> str:
    """The study name an OptunaSearch was given. Missing public API: kept only in `_study_name`."""
    return searcher._study_name


def searcher_sampler(searcher):
    """The sampler an OptunaSearch's study uses. Missing public API: kept only in `_sampler`."""
    return searcher._sampler


def searcher_trials(searcher) -> dict:
    """Tune trial id → the optuna.Trial OptunaSearch asked for it (mutable: adding one re-attaches a trial).
    Missing public API: the mapping is `_ot_trials`."""
    return searcher._ot_trials


def searcher_finished(searcher) -> set:
    """The Tune trial ids OptunaSearch has told the study about (mutable). Missing public API: `_completed_trials`."""
    return searcher._completed_trials
