"""`ctkd-tune search`: Ray Tune runs full CTKD distillations while Optuna searches the CTKD knobs.

    ctkd-tune search                                           # the Shakespeare default (settings.DEFAULT_BUDGET)
    ctkd-tune search --preset tiny --num-samples 4 --name smoke
    ctkd-tune search --name smoke --num-samples 4              # 4 more trials in the same Optuna study
    ctkd-tune search --name smoke --resume                     # continue an interrupted (or killed) search
    ctkd-tune search --name smoke --rebuild-tables             # trials/curves.parquet again, from study + trials

One trial = one `distill` run (trainables/). Optuna's TPE (seeded) proposes the space's parameters, the plan's
known points first; ASHA stops weak trials on val/ppl once the longest λ warmup is over; `DivergenceStopper` stops
diverged ones. Ray's OptunaSearch would tell Optuna a trial stopped early as COMPLETE with its truncated value:
`CTKDOptunaSearch` tells PRUNED instead, FAIL for diverged and errored trials, COMPLETE only for trials that ran
to train.steps (`ctkd_tune.search.results.trial_outcome` decides, for the tables too). Everything lands in results/NAME/:
optuna.db (one study per experiment), search.json (how to resume), trials.parquet, curves.parquet,
best_config.yaml, the Ray experiment dirs (ray/NAME-runK/) and the local Ray's logs (logs/).

Reliability: one driver per experiment (`lock.experiment_lock`); the tables are rewritten as trials end and at
least every minute (`searcher.TableWriter`); SIGTERM and SIGHUP stop the search like Ctrl-C (trials stop at their
last checkpoint, the tables are written, exit 130); `--resume` reconciles the study with Ray's last snapshot
(`searcher.CTKDOptunaSearch.reconcile`) and rebuilds unreadable tables; a local Ray listens on 127.0.0.1 only.
"""

from __future__ import annotations

import math
import os
import shutil
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from ctkd_tune.run.checks import default_ppl_threshold
from ctkd_tune.config import Config, ConfigError, from_dict
from ctkd_tune.io import atomic_write_json
from ctkd_tune.search.lock import experiment_lock
from ctkd_tune.search.cluster import check_local_resources, open_cluster, stop_on_signals, trials_that_fit
from ctkd_tune.search.results import record_from_result
from ctkd_tune.search.compat import replace_restored_search
from ctkd_tune.search.folder import (SearchResult, any_unfinished, check_no_unfinished_trials, final_tables,
                                     live_record, open_storage, ray_storage, read_state, rebuild_search_tables,
                                     refresh_tables, study_is_empty, tables_readable)
from ctkd_tune.search.searcher import CheckpointGuard, CTKDOptunaSearch, DivergenceStopper, TableWriter, fail_orphans
from ctkd_tune.search.reporter import LiveReporter, named_trainable, ray_trial_dirname, ray_trial_name

from ctkd_tune.search.settings import (DEFAULT_BUDGET, DEFAULT_NUM_SAMPLES, METRIC, MODE,  # noqa: F401 (re-exported)
                                       STARTUP_TRIALS, TABLE_PERIOD_S, SearchSettings, StudySettings)


def run_search(base_cfg: Config | None, settings: SearchSettings | None = None, *, resume: bool = False,
               rebuild_tables: bool = False) -> SearchResult:
    """Run (or extend, or resume) the search `settings.name`; returns its tables. See the module docstring.

    base_cfg None: the experiment's own base config when NAME exists (adding trials), else `base_config()`;
    `settings.space` None: likewise the experiment's space, else the default space. `resume`: continue the last
    run with its own config and settings. `rebuild_tables`: only rewrite trials.parquet / curves.parquet (and
    best_config.yaml) from the study and the trial folders.
    """
    from ctkd_tune.search.spaces import DEFAULT_SPACE, load_space

    s = settings or SearchSettings()
    s.check()
    directory = Path(s.results_root).resolve() / s.name
    state_file = directory / "search.json"
    state = read_state(state_file) if state_file.is_file() else None
    if rebuild_tables or resume:
        if state is None:
            raise ConfigError(f"--{'resume' if resume else 'rebuild-tables'}: no search named {s.name!r} in "
                              f"{directory.parent}")
        base_cfg, space, fixed = from_dict(state["base"]), state["space"], state["settings"]
        if rebuild_tables:
            with experiment_lock(directory, "search --rebuild-tables"):
                return rebuild_search_tables(directory, state, open_storage(directory))
    else:
        base_cfg, space, fixed = _new_run(base_cfg, s, state)
    space_fn = load_space(space or DEFAULT_SPACE)  # a file-based space must be importable to unpickle the searcher
    address = s.address or os.environ.get("RAY_ADDRESS")
    if not address:
        check_local_resources(fixed.cpus_per_trial, fixed.gpus_per_trial)  # before Ray starts
    if state is not None:
        open_storage(directory)  # a damaged optuna.db is an error before Ray starts
    _tune_environment()
    stopped: list[str] = []
    with ExitStack() as held:
        if state is not None:  # a second driver is refused before Ray starts
            held.enter_context(experiment_lock(directory, "search"))
        started = _init_ray(address, s.dashboard_host)  # an unreachable cluster fails here, before anything is written
        held.callback(_disconnect, started, directory)
        limit = s.max_concurrent or trials_that_fit(fixed.cpus_per_trial, fixed.gpus_per_trial)
        if state is None:
            held.enter_context(experiment_lock(directory, "search"))
        with stop_on_signals(stopped):
            storage = open_storage(directory)
            runs = state["runs"] if state else []
            stored = state.get("teacher_states") if state else None  # what --resume's trials read
            if not resume:
                check_no_unfinished_trials(storage, s.name)
                stored = _prepare_shared(base_cfg)  # built once, before trials could race for them
                runs = runs + [{"name": f"{s.name}-run{len(runs) + 1}",
                                "storage_path": ray_storage(s.storage_path, directory),
                                "num_samples": s.num_samples or DEFAULT_NUM_SAMPLES}]
                atomic_write_json(state_file, {"name": s.name, "base": base_cfg.to_dict(), "space": space or None,
                                               "settings": fixed.to_dict(), "runs": runs,
                                               "teacher_states": str(stored) if stored else None})
            elif not tables_readable(directory):
                print(f"ctkd-tune: {directory}: rebuilding damaged tables from the study and the trial folders")
                rebuild_search_tables(directory, state, storage)
            run = runs[-1]
            trainable = _named_trainable(base_cfg, fixed, s.name, directory, stored)
            experiment = f"{run['storage_path'].rstrip('/')}/{run['name']}"
            # the callbacks and the searcher get this driver's folder and storage as constructor arguments; a
            # restored Tuner runs with these too, not with the ones its tuner.pkl holds (`compat`)
            writer = TableWriter(partial(refresh_tables, directory, base_cfg, fixed, storage, s.name, run["name"]),
                                 TABLE_PERIOD_S)
            callbacks = [writer, CheckpointGuard()]
            if resume and tune.Tuner.can_restore(experiment):
                print(f"ctkd-tune: resuming {experiment}")
                tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True,
                                           resume_errored=False)
                # no known points: the study already holds them (the snapshot's searcher state replaces the rest)
                replace_restored_search(tuner, _searcher(fixed, storage, s.name, space_fn, len(runs), limit, []),
                                        callbacks)
            else:  # a new run, or one killed before Ray's first snapshot: start it (again), orphans re-attached
                if resume:
                    print(f"ctkd-tune: {experiment} holds no Ray snapshot: starting that run again")
                    shutil.rmtree(experiment, ignore_errors=True)
                points = fixed.points if study_is_empty(storage, s.name) else []
                search_alg = _searcher(fixed, storage, s.name, space_fn, len(runs), limit, points,
                                       adopt_orphans=resume)
                tuner = tune.Tuner(trainable, tune_config=_tune_config(fixed, search_alg, run),
                                   run_config=_run_config(fixed, run, s.verbose, callbacks))
            grid = tuner.fit()
            # Tune's own trials as the run ended; its ResultGrid (read back from storage) is the fallback
            records = ([live_record(t) for t in writer.ended] if writer.ended is not None else
                       [record_from_result(result) for result in grid])
            if not stopped and not any_unfinished(records, storage, s.name):
                fail_orphans(optuna.load_study(study_name=s.name, storage=storage), set())  # none left behind
            return final_tables(directory, records, base_cfg, fixed, storage, s.name, run["name"], bool(stopped))


def _new_run(base_cfg: Config | None, s: SearchSettings, state: dict | None) -> tuple[Config, str | None,
                                                                                  StudySettings]:
    """A new search, or more trials in an existing one: its base config, space and the study's settings. Adding
    trials keeps the experiment's own base config and space unless given, and refuses different ones."""
    from ctkd_tune.search.spaces import DEFAULT_SPACE, check_space, load_space

    space = s.space
    if state is not None:
        base_cfg = base_cfg or from_dict(state["base"])
        space = space or state["space"]
    base_cfg = _shared_seeds(base_cfg or base_config())
    if state is not None and (state["base"] != base_cfg.to_dict() or state["space"] != (space or None)):
        raise ConfigError(f"search {s.name!r} was run with another base config or space; pick a new --name")
    info = check_space(load_space(space or DEFAULT_SPACE), base_cfg, space or "default", s.points)
    steps = base_cfg.train.steps
    fixed = StudySettings(
        params=info.params, points=info.points,
        grace_period=s.grace_period or _grace_period(info.max_warmup_ratio, steps), max_t=steps,
        reduction_factor=s.reduction_factor, runaway_patience=s.runaway_patience,
        ppl_threshold=s.ppl_threshold or default_ppl_threshold(base_cfg), seed=s.seed,
        cpus_per_trial=s.cpus_per_trial, gpus_per_trial=s.gpus_per_trial, sampler=s.sampler,
        scheduler=s.scheduler)
    return base_cfg, space, fixed


def _tune_environment() -> None:
    """The environment Tune reads at start: trials keep the driver's working directory, the classic output engine
    (it prints our LiveReporter), and no warning per forced snapshot."""
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # num_to_keep forces an experiment snapshot every 2 checkpoints (so a resume never points at a deleted one);
    # that is intended here, not a bottleneck worth a warning per snapshot
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def _disconnect(started: bool, directory: Path) -> None:
    from ctkd_tune.search.cluster import disconnect

    disconnect(started, logs_to=directory / "logs" if directory.is_dir() else None)


def _grace_period(max_warmup_ratio: float, steps: int) -> int:
    """ASHA's first rung: the longest λ warmup of the space plus 5% of the run.

    While λ = 0 the temperature is frozen at tau_init, so before the longest warmup ends trials differ mostly by
    how fast the student starts, not by the curriculum being searched; 5% more steps let the adversary act. With
    the default space (warmup ≤ 0.4) and reduction factor 2 the rungs sit at 45% and 90% of the run; a rung acts
    at the first evaluation at or after it (step 200 of the default 400: trials below the median stop there).
    """
    return min(steps, math.ceil(max_warmup_ratio * steps) + max(1, math.ceil(0.05 * steps)))


def base_config(path: str | None = None, preset: str | None = None, overrides: list[str] = ()) -> Config:
    """The search's base config, as for `distill`; with neither a file nor a preset: the Shakespeare preset at
    the default search budget (DEFAULT_BUDGET; how long that takes: the estimate in `settings`)."""
    from ctkd_tune.config import load_config

    if path is None and preset is None:
        return load_config(None, "shakespeare", [*(f"{k}={v}" for k, v in DEFAULT_BUDGET.items()), *overrides])
    return load_config(path, preset, overrides)


def _shared_seeds(cfg: Config) -> Config:
    """All trials see the same batches and start from the same student: they differ only by their params."""
    data = cfg.to_dict()
    data["train"].update(data_seed=cfg.train.resolved_data_seed, init_seed=cfg.train.resolved_init_seed)
    return from_dict(data)


def _searcher(fixed: StudySettings, storage, name, space_fn, run_index, limit, points,
              adopt_orphans=False) -> ConcurrencyLimiter:
    """The Optuna searcher of run `run_index` on the experiment's study, at most `limit` trials at once."""
    seed = fixed.seed + run_index - 1  # a run that adds trials must not replay the first run's draws
    if fixed.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS)
    searcher = CTKDOptunaSearch(space=space_fn, metric=METRIC, mode=MODE, points_to_evaluate=points or None,
                                sampler=sampler, study_name=name, storage=storage,
                                ppl_threshold=fixed.ppl_threshold, runaway_patience=fixed.runaway_patience,
                                adopt_orphans=adopt_orphans)
    return ConcurrencyLimiter(searcher, max_concurrent=limit)


def _tune_config(fixed: StudySettings, search_alg, run) -> tune.TuneConfig:
    if fixed.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="step", metric=METRIC, mode=MODE, max_t=fixed.max_t,
                                  grace_period=fixed.grace_period, reduction_factor=fixed.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=run["num_samples"],
                           reuse_actors=False, trial_name_creator=ray_trial_name,
                           trial_dirname_creator=ray_trial_dirname)


def _run_config(fixed: StudySettings, run, verbose, callbacks) -> tune.RunConfig:
    reporter = LiveReporter(fixed.max_t, fixed.ppl_threshold, fixed.runaway_patience, title=run["name"])
    return tune.RunConfig(name=run["name"], storage_path=run["storage_path"], verbose=verbose,
                          stop=DivergenceStopper(fixed.ppl_threshold, fixed.runaway_patience),
                          failure_config=tune.FailureConfig(max_failures=2),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=2), progress_reporter=reporter,
                          callbacks=callbacks)


# --- helpers -----------------------------------------------------------------------------------------------------

def _trainable():
    from trainables import train_ctkd

    return train_ctkd


def _named_trainable(base_cfg: Config, fixed: StudySettings, name: str, directory: Path, stored: str | None):
    """The trainable as actor class CTKDTrial named after the trial; it feeds the gauges and TensorBoard. `stored`:
    the teacher states built for the trials (each then loads the teacher's head only)."""
    watch = {"experiment": name, "tensorboard": str(directory / "tensorboard")}
    function = tune.with_resources(tune.with_parameters(_trainable(), base=base_cfg.to_dict(), watch=watch,
                                                        stored=str(stored) if stored else None),
                                   {"cpu": fixed.cpus_per_trial, "gpu": fixed.gpus_per_trial})
    return named_trainable(function)


def _prepare_shared(cfg: Config) -> Path | None:
    """Teacher, token cache and the teacher's outputs on the shared training and held-out batches, built once for
    all trials; returns the outputs' folder (None when they are not stored)."""
    from ctkd_tune.run.prepare import prepare
    from ctkd_tune.run.teacher_states import build

    setup = prepare(cfg)
    stored = build(cfg, setup.teacher, setup.data)
    del setup
    return stored


def _init_ray(address: str | None, dashboard_host: str) -> bool:
    """Connect to `address`, or start a local Ray with the dashboard on `dashboard_host`; True if we started it."""
    if address and address.startswith("ray://"):  # Tune then runs the search loop (and Optuna's sqlite) remotely
        print("ctkd-tune: note: with ray:// the searcher runs on the head node: give a --results-dir on storage "
              "it shares with this machine (or run `ctkd-tune search --address auto` on the head node)")
    return open_cluster(address, dashboard_host)
