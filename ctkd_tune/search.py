"""`ctkd-tune search`: Ray Tune runs full CTKD distillations while Optuna searches the CTKD knobs.

    ctkd-tune search                                           # the Shakespeare default, ~10 min on 2 CPU cores
    ctkd-tune search --preset tiny --num-samples 4 --name smoke
    ctkd-tune search --name smoke --num-samples 4              # 4 more trials in the same Optuna study
    ctkd-tune search --name smoke --resume                     # continue an interrupted search

One trial = one `distill` run (trainables/). Optuna's TPE (seeded) proposes the space's parameters, the plan's
known points first; ASHA stops weak trials on val/ppl once the longest λ warmup is over; `DivergenceStopper` stops
diverged ones. Ray's OptunaSearch would tell Optuna a trial stopped early as COMPLETE with its truncated value:
`CTKDOptunaSearch` tells PRUNED instead, FAIL for diverged and errored trials, COMPLETE only for trials that ran
to train.steps (`ctkd_tune.results.trial_outcome` decides, for the tables too). Everything lands in results/NAME/:
optuna.db (one study per experiment), search.json (how to resume), trials.parquet, curves.parquet,
best_config.yaml and the Ray experiment dirs (ray/NAME-runK/).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from ctkd_tune.config import Config, ConfigError, from_dict
from ctkd_tune.io import atomic_write_json
from ctkd_tune.tune_watch import LiveReporter, named_trainable, ray_trial_dirname, ray_trial_name
from ctkd_tune.results import (OPTUNA_TRIAL_KEY, build_tables, divergence_reason, summary_table, trial_outcome,
                               write_best_config, write_tables)

# The default search (no --config/--preset): the Shakespeare preset at 150 steps, 8 trials, 2 at a time on 2 CPU
# cores. One such trial alone takes ~160 s on one core (7 evaluations); ASHA stops about half of the trials at
# step 75, so the search takes ~10 min on an idle 2-core machine once the teacher is cached. `--set` overrides.
DEFAULT_NUM_SAMPLES = 8
DEFAULT_BUDGET = {"train.steps": 150, "train.eval_every": 25}  # eval every 25: ASHA's rung (68) acts at step 75
STARTUP_TRIALS = 4  # TPE samples at random until this many trials finished (the known points count)
METRIC, MODE = "val/ppl", "min"
SAMPLERS = ("tpe", "random")
SCHEDULERS = ("asha", "none")  # none: no early stopping (divergence still stops a trial)


class CTKDOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth: COMPLETE only for full runs, PRUNED if stopped early, FAIL if
    diverged or errored; intermediate values are indexed by training step; NaN never reaches the study."""

    def __init__(self, *args, ppl_threshold: float, runaway_patience: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.ppl_threshold, self.runaway_patience = ppl_threshold, runaway_patience

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if config is not None:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            config[OPTUNA_TRIAL_KEY] = ot_trial.number  # links the trials table to the study
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._report(self._ot_trials[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        if result is None and not error:  # removed before it ever ran: nothing was learnt about its params
            status, reason = "error", "stopped before it ran"
        else:
            status, reason = trial_outcome(result, error, self.ppl_threshold, self.runaway_patience)
        ot_trial.set_user_attr("status", status)
        ot_trial.set_user_attr("stop_reason", reason or "")
        try:
            if status == "completed":
                self._ot_study.tell(ot_trial, result[self.metric], state=optuna.trial.TrialState.COMPLETE)
            elif status == "pruned":
                self._report(ot_trial, result)  # the stopping report never reached on_trial_result
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            else:
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        except Exception as err:  # never let the study break the search; the tables still record the trial
            print(f"ctkd-tune: optuna could not record trial {ot_trial.number}: {err}")
        self._completed_trials.add(trial_id)

    def _report(self, ot_trial, result: dict) -> None:
        value, step = result.get(self.metric), result.get("step")
        if result.get("status") != "diverged" and _finite(value) and _finite(step):
            with warnings.catch_warnings():  # a resumed trial may repeat a step: optuna keeps the first, and warns
                warnings.simplefilter("ignore")
                ot_trial.report(value, int(step))


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


@dataclass
class SearchResult:
    directory: Path
    trials: Any  # pandas DataFrame, as in trials.parquet
    curves: Any
    best_config: Path | None
    interrupted: bool


def run_search(base_cfg: Config | None, space: str | None = None, name: str = "ctkd-search",
               num_samples: int | None = None, max_concurrent: int | None = None, cpus_per_trial: float = 1.0,
               gpus_per_trial: float = 0.0, resume: bool = False, address: str | None = None,
               storage_path: str | None = None, results_root: str | Path = "results", seed: int = 0,
               dashboard_host: str = "127.0.0.1", grace_period: int | None = None, reduction_factor: float = 2,
               ppl_threshold: float | None = None, runaway_patience: int = 3, points: list[dict] | None = None,
               sampler: str = "tpe", scheduler: str = "asha", verbose: int = 1) -> SearchResult:
    """Run (or extend, or resume) the search NAME; returns its tables. See the module docstring.

    base_cfg None: the experiment's own base config when NAME exists (adding trials), else `base_config()`;
    space None: likewise the experiment's space, else the default space.

    sampler "tpe" (seeded TPE, random for its first STARTUP_TRIALS) or "random"; scheduler "asha" (early
    stopping) or "none" (every trial runs to train.steps unless it diverges): the search-efficiency benchmark
    compares TPE + ASHA with random search without early stopping.

    Tuning knobs: ASHA's grace_period (default: past the longest λ warmup, see `_grace_period`) and
    reduction_factor; the divergence criteria ppl_threshold (default: checks.ppl_at_10, the plan's ceiling at 10%
    of the run) and runaway_patience (evaluations with the temperature at a bound; 0 = off); the known points
    (default: the plan's recommended config and fallback C; evaluated only while the study is empty). All
    settings are recorded in results/NAME/search.json, which `resume=True` reads back.
    """
    from search_spaces import check_space, load_space

    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"--name must be a plain folder name, got {name!r}")
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {max_concurrent}")
    if num_samples is not None and num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {num_samples}")
    directory = Path(results_root).resolve() / name
    state_file = directory / "search.json"
    state = _read_state(state_file) if state_file.is_file() else None
    if resume:
        if state is None:
            raise ConfigError(f"--resume: no search named {name!r} in {directory.parent}")
        base_cfg = from_dict(state["base"])
        space_fn = load_space(state["space"])  # a file-based space must be importable to unpickle the searcher
        settings = state["settings"]
    else:
        if state is not None:  # adding trials: the experiment's own base config and space unless given
            base_cfg = base_cfg or from_dict(state["base"])
            space = space or state["space"]
        base_cfg = _shared_seeds(base_cfg or base_config())
        if state is not None and (state["base"] != base_cfg.to_dict() or state["space"] != (space or None)):
            raise ConfigError(f"search {name!r} was run with another base config or space; pick a new --name")
        space_fn = load_space(space)
        info = check_space(space_fn, base_cfg, space or "default", points)
        steps = base_cfg.train.steps
        grace = grace_period or _grace_period(info.max_warmup_ratio, steps)
        if sampler not in SAMPLERS:
            raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if scheduler not in SCHEDULERS:
            raise ConfigError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
        settings = {"params": info.params, "points": info.points, "grace_period": grace, "max_t": steps,
                    "reduction_factor": reduction_factor, "runaway_patience": runaway_patience,
                    "ppl_threshold": ppl_threshold or base_cfg.checks.ppl_at_10, "seed": seed,
                    "cpus_per_trial": cpus_per_trial, "gpus_per_trial": gpus_per_trial, "sampler": sampler,
                    "scheduler": scheduler}
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic output engine: it prints our LiveReporter
    # num_to_keep forces an experiment snapshot every 2 checkpoints (so a resume never points at a deleted one);
    # that is intended here, not a bottleneck worth a warning per snapshot
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started = _init_ray(address, dashboard_host)  # an unreachable cluster fails here, before anything is written
    try:
        fit = _resource_limit(settings["cpus_per_trial"], settings["gpus_per_trial"])  # fails on impossible requests
        limit = max_concurrent or fit
        directory.mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.RDBStorage(f"sqlite:///{directory / 'optuna.db'}")  # sqlite:////ABS/optuna.db
        runs = state["runs"] if state else []
        if not resume:
            _check_no_unfinished_trials(storage, name)
            _prepare_shared(base_cfg)  # built once, before trials could race for them
            runs = runs + [{"name": f"{name}-run{len(runs) + 1}", "storage_path": _storage(storage_path, directory),
                            "num_samples": num_samples or DEFAULT_NUM_SAMPLES}]
            atomic_write_json(state_file, {"name": name, "base": base_cfg.to_dict(), "space": space or None,
                                           "settings": settings, "runs": runs})
        run = runs[-1]
        trainable = _named_trainable(base_cfg, settings, name, directory)
        experiment = f"{run['storage_path'].rstrip('/')}/{run['name']}"
        if resume:
            if not tune.Tuner.can_restore(experiment):
                raise ConfigError(f"--resume: {experiment} holds no Ray experiment state (the run never started); "
                                  "run again without --resume")
            print(f"ctkd-tune: resuming {experiment}")
            tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=False)
        else:
            tuner = tune.Tuner(trainable, tune_config=_tune_config(settings, storage, name, space_fn, run, len(runs),
                                                                  limit),
                               run_config=_run_config(settings, run, verbose))
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    return _write_results(directory, grid, base_cfg, settings, storage, name, run["name"])


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
    the default search budget (DEFAULT_BUDGET), so `ctkd-tune search` alone finishes in about 10 minutes."""
    from ctkd_tune.config import load_config

    if path is None and preset is None:
        return load_config(None, "shakespeare", [*(f"{k}={v}" for k, v in DEFAULT_BUDGET.items()), *overrides])
    return load_config(path, preset, overrides)


def _shared_seeds(cfg: Config) -> Config:
    """All trials see the same batches and start from the same student: they differ only by their params."""
    data = cfg.to_dict()
    for key in ("data_seed", "init_seed"):
        if data["train"][key] is None:
            data["train"][key] = data["train"]["seed"]
    return from_dict(data)


def _tune_config(settings, storage, name, space_fn, run, run_index, limit) -> tune.TuneConfig:
    points = settings["points"] if _study_is_empty(storage, name) else []
    seed = settings["seed"] + run_index - 1  # a run that adds trials must not replay the first run's draws
    if settings.get("sampler", "tpe") == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS)
    searcher = CTKDOptunaSearch(space=space_fn, metric=METRIC, mode=MODE, points_to_evaluate=points or None,
                                sampler=sampler, study_name=name, storage=storage,
                                ppl_threshold=settings["ppl_threshold"],
                                runaway_patience=settings["runaway_patience"])
    if settings.get("scheduler", "asha") == "asha":
        scheduler = ASHAScheduler(time_attr="step", metric=METRIC, mode=MODE, max_t=settings["max_t"],
                                  grace_period=settings["grace_period"],
                                  reduction_factor=settings["reduction_factor"])
    else:
        scheduler = FIFOScheduler()
    return tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=limit), scheduler=scheduler,
                           num_samples=run["num_samples"], reuse_actors=False, trial_name_creator=ray_trial_name,
                           trial_dirname_creator=ray_trial_dirname)


def _run_config(settings, run, verbose) -> tune.RunConfig:
    reporter = LiveReporter(settings["max_t"], settings["ppl_threshold"], settings["runaway_patience"],
                            title=run["name"])
    return tune.RunConfig(name=run["name"], storage_path=run["storage_path"], verbose=verbose,
                          stop=DivergenceStopper(settings["ppl_threshold"], settings["runaway_patience"]),
                          failure_config=tune.FailureConfig(max_failures=2),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=2), progress_reporter=reporter)


def _write_results(directory, grid, base_cfg, settings, storage, name, run_name) -> SearchResult:
    study = optuna.load_study(study_name=name, storage=storage)
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    trials, curves = build_tables(grid, base_cfg.to_dict(), ppl_threshold=settings["ppl_threshold"],
                                  runaway_patience=settings["runaway_patience"], optuna_states=states, run=run_name)
    trials, curves = write_tables(directory, trials, curves)
    best = write_best_config(directory, trials)
    interrupted = bool(len(trials)) and bool((trials["status"] == "interrupted").any())
    print(summary_table(trials, settings["params"]))
    print(f"results: {directory}/trials.parquet, curves.parquet" + (f", {best.name}" if best else ""))
    if interrupted:
        print(f"ctkd-tune: search interrupted; continue it with: ctkd-tune search --name {name} --resume")
    elif best:
        print(f"next: ctkd-tune validate --experiment {directory}   (the best trials × fresh seeds next to the "
              "fallbacks), then ctkd-tune report / export")
    return SearchResult(directory, trials, curves, best, interrupted)


# --- helpers -----------------------------------------------------------------------------------------------------

def _trainable():
    from trainables import train_ctkd

    return train_ctkd


def _named_trainable(base_cfg: Config, settings: dict, name: str, directory: Path):
    """The trainable as actor class CTKDTrial named after the trial; it feeds the gauges and TensorBoard."""
    watch = {"experiment": name, "tensorboard": str(directory / "tensorboard")}
    function = tune.with_resources(tune.with_parameters(_trainable(), base=base_cfg.to_dict(), watch=watch),
                                   {"cpu": settings["cpus_per_trial"], "gpu": settings["gpus_per_trial"]})
    return named_trainable(function)


def _storage(storage_path: str | None, directory: Path) -> str:
    """Ray's storage: a URI as given, a local path made absolute, or results/NAME/ray by default."""
    if not storage_path:
        return str(directory / "ray")
    return storage_path if "://" in storage_path else str(Path(storage_path).resolve())


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_state(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _study_is_empty(storage, name: str) -> bool:
    try:
        return not optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return True


def _check_no_unfinished_trials(storage, name: str) -> None:
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return
    running = [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    if running:
        raise ConfigError(f"search {name!r} has unfinished trials {running}: continue it first with "
                          f"`ctkd-tune search --name {name} --resume`")


def _prepare_shared(cfg: Config) -> None:
    """Teacher, token cache and the teacher's outputs on the shared training batches, built once for all trials."""
    from ctkd_tune.distill import prepare
    from ctkd_tune.teacher_states import build

    setup = prepare(cfg)
    build(cfg, setup.teacher, setup.data)
    del setup


def _resource_limit(cpus_per_trial: float, gpus_per_trial: float) -> int:
    resources = ray.cluster_resources()
    cpus = resources.get("CPU", 1.0)
    if cpus_per_trial <= 0 or cpus_per_trial > cpus:
        raise ConfigError(f"--cpus-per-trial must be in (0, {cpus:g}] (the cluster's CPUs), got {cpus_per_trial}")
    limit = int(cpus // cpus_per_trial)
    if gpus_per_trial > 0:
        gpus = resources.get("GPU", 0.0)
        if gpus_per_trial > gpus:
            raise ConfigError(f"--gpus-per-trial {gpus_per_trial} but the cluster has {gpus:g} GPUs")
        limit = min(limit, int(gpus // gpus_per_trial))
    return max(1, limit)


def _init_ray(address: str | None, dashboard_host: str) -> bool:
    """Connect to `address`, or start a local Ray with the dashboard on `dashboard_host`; True if we started it."""
    from ctkd_tune.raycluster import connect

    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith("ray://"):  # Tune then runs the search loop (and Optuna's sqlite) remotely
        print("ctkd-tune: note: with ray:// the searcher runs on the head node: give a --results-dir on storage "
              "it shares with this machine (or run `ctkd-tune search --address auto` on the head node)")
    if not address and dashboard_host not in ("127.0.0.1", "localhost", "::1"):
        print(f"ctkd-tune: WARNING: the Ray dashboard will listen on {dashboard_host}: whoever reaches it with "
              "the token can run code here (Jobs API, CVE-2023-48022). Prefer 127.0.0.1 and an SSH tunnel.")
    # A new local Ray turns token auth on (unless RAY_AUTH_MODE says otherwise): we never switch it off.
    started, context = connect(address, include_dashboard=True, dashboard_host=dashboard_host)
    if not started:
        return False
    url = getattr(context, "dashboard_url", None)
    if url:
        print(f"ctkd-tune: Ray dashboard: http://{url}")
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            print("ctkd-tune: token auth is on: the page asks for the token; print it with `ray get-auth-token`"
                  " (remote: ssh -L 8265:localhost:8265 HOST, then open http://localhost:8265)")
        else:
            print(f"ctkd-tune: WARNING: Ray token auth is off (RAY_AUTH_MODE={os.environ.get('RAY_AUTH_MODE')!r})")
    return True
