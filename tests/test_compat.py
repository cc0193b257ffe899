"""Every private Ray / Optuna access in `ctkd_tune.search.compat` still exists with the shape it relies on.

One test per compat function, named after it: after an upgrade, a failing test names the function to revisit
(and `compat.TESTED` the versions it was checked on). No Ray cluster is started.
"""

from __future__ import annotations

import inspect
import logging

import optuna
import pytest

from ctkd_tune.search import compat

pytestmark = pytest.mark.filterwarnings("ignore")


def _broken(function: str, what: str) -> str:
    return (f"ctkd_tune.search.compat.{function}: {what} (checked on {compat.TESTED}); "
            "an upgrade changed a private API: update compat.py and the version bounds in pyproject.toml")


def _space(trial):
    trial.suggest_float("temperature.tau_max", 2.0, 5.0)


def _searcher(storage=None):
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(space=_space, metric="val/ppl", mode="min", sampler=optuna.samplers.RandomSampler(0),
                        study_name="compat", storage=storage)


def test_installed_versions_are_within_the_tested_bounds():
    import ray

    for module, tested in ((ray, compat.TESTED["ray"]), (optuna, compat.TESTED["optuna"])):
        installed = tuple(int(p) for p in module.__version__.split(".")[:2])
        assert installed <= tuple(int(p) for p in tested.split(".")[:2]), _broken(
            module.__name__, f"installed {module.__version__} is newer than the tested {tested}")


def test_keep_ray_node_local():
    from ray._private import ray_constants

    assert hasattr(ray_constants, "ENABLE_RAY_CLUSTER"), _broken("keep_ray_node_local",
                                                                 "ray_constants.ENABLE_RAY_CLUSTER is gone")
    before = ray_constants.ENABLE_RAY_CLUSTER
    try:
        compat.keep_ray_node_local()
        assert ray_constants.ENABLE_RAY_CLUSTER is False
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def test_local_session_dir():
    import ray

    worker = ray._private.worker
    assert hasattr(worker, "_global_node"), _broken("local_session_dir", "ray._private.worker._global_node is gone")
    from ray._private.node import Node

    assert callable(getattr(Node, "get_session_dir_path", None)) and "head" in inspect.signature(Node).parameters, \
        _broken("local_session_dir", "Node lost get_session_dir_path or its head flag")
    if not ray.is_initialized():
        assert compat.local_session_dir() is None


def test_wrap_function_trainable():
    from ray.tune import Trainable

    def train(config):
        pass

    cls = compat.wrap_function_trainable(train)
    assert isinstance(cls, type) and issubclass(cls, Trainable), _broken(
        "wrap_function_trainable", f"wrap_function returned {cls!r}, not a Trainable class")
    assert hasattr(cls, "trial_name"), _broken("wrap_function_trainable", "the Trainable lost trial_name")


def test_checkpoint_result(tmp_path):
    from ray import tune

    result = compat.checkpoint_result(tune.Checkpoint.from_directory(str(tmp_path)), {"step": 4})
    assert result.checkpoint.path == str(tmp_path) and result.metrics == {"step": 4}, _broken(
        "checkpoint_result", "_TrainingResult(checkpoint=, metrics=) changed")


def _manager_with_two(tmp_path):
    from ray import tune
    from ray.train._internal.checkpoint_manager import _CheckpointManager

    manager = _CheckpointManager(tune.CheckpointConfig(num_to_keep=2))
    results = []
    for step in (1, 2):
        (tmp_path / f"checkpoint_{step:06d}").mkdir()
        results.append(compat.checkpoint_result(
            tune.Checkpoint.from_directory(str(tmp_path / f"checkpoint_{step:06d}")), {"step": step}))
        manager.register_checkpoint(results[-1])
    return manager, results


def test_checkpoint_results(tmp_path):
    manager, results = _manager_with_two(tmp_path)
    assert hasattr(manager, "_checkpoint_results"), _broken("checkpoint_results", "_checkpoint_results is gone")
    assert compat.checkpoint_results(manager) == results, _broken(
        "checkpoint_results", "_checkpoint_results no longer lists the registered checkpoints in order")


def test_set_checkpoint_results(tmp_path):
    manager, results = _manager_with_two(tmp_path)
    for name in ("_checkpoint_results", "_latest_checkpoint_result"):
        assert hasattr(manager, name), _broken("set_checkpoint_results", f"the manager lost {name}")
    compat.set_checkpoint_results(manager, results[:1], results[0])
    assert manager.latest_checkpoint_result is results[0], _broken(
        "set_checkpoint_results", "latest_checkpoint_result no longer reads _latest_checkpoint_result")
    assert manager.best_checkpoint_results == results[:1], _broken(
        "set_checkpoint_results", "best_checkpoint_results no longer reads _checkpoint_results")
    compat.set_checkpoint_results(manager, [], None)
    assert manager.latest_checkpoint_result is None and manager.best_checkpoint_results == []


def test_replace_restored_search():
    from ray import tune
    from ray.tune.impl.tuner_internal import TunerInternal

    assert "_local_tuner" in tune.Tuner.__annotations__, _broken("replace_restored_search",
                                                                 "Tuner no longer has _local_tuner")
    internal = TunerInternal.__new__(TunerInternal)  # what a restored Tuner holds, without a restore
    internal._tune_config, internal._run_config = tune.TuneConfig(), tune.RunConfig(callbacks=[])
    tuner = tune.Tuner.__new__(tune.Tuner)
    tuner._local_tuner = internal
    marker, callbacks = object(), [tune.Callback()]
    assert compat.replace_restored_search(tuner, marker, callbacks)
    assert internal._tune_config.search_alg is marker and internal._run_config.callbacks == callbacks
    source = inspect.getsource(TunerInternal)
    for name in ("self._tune_config.search_alg", "self._run_config.callbacks"):
        assert name in source, _broken("replace_restored_search", f"TunerInternal no longer runs with {name}")
    assert "_tuner_internal" in inspect.getsource(tune.Tuner.restore), _broken(
        "replace_restored_search", "Tuner.restore no longer builds a TunerInternal")


def test_live_trial():
    study = optuna.create_study()
    study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    assert isinstance(getattr(frozen, "_trial_id", None), int), _broken("live_trial", "FrozenTrial._trial_id is gone")
    trial = compat.live_trial(study, frozen)
    trial.set_user_attr("status", "error")
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert study.trials[0].user_attrs == {"status": "error"} and study.trials[0].state.name == "FAIL"


def test_searcher_study():
    searcher = _searcher()
    assert isinstance(compat.searcher_study(searcher), optuna.Study), _broken("searcher_study",
                                                                              "OptunaSearch._ot_study changed")


def test_set_searcher_study(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    searcher = _searcher()
    study = optuna.create_study(study_name="compat", storage=storage)
    compat.set_searcher_study(searcher, study, storage)
    assert searcher._storage is storage, _broken("set_searcher_study", "OptunaSearch._storage is gone")
    searcher.suggest("t1")
    assert len(study.trials) == 1, _broken("set_searcher_study", "suggest no longer asks OptunaSearch._ot_study")


def test_searcher_study_name():
    assert compat.searcher_study_name(_searcher()) == "compat", _broken("searcher_study_name",
                                                                       "OptunaSearch._study_name changed")


def test_searcher_sampler():
    sampler = compat.searcher_sampler(_searcher())
    assert isinstance(sampler, optuna.samplers.BaseSampler) and callable(sampler.reseed_rng), _broken(
        "searcher_sampler", "OptunaSearch._sampler changed")


def test_searcher_trials():
    searcher = _searcher()
    searcher.suggest("t1")
    trials = compat.searcher_trials(searcher)
    assert isinstance(trials, dict) and isinstance(trials.get("t1"), optuna.Trial), _broken(
        "searcher_trials", "OptunaSearch._ot_trials no longer maps Tune ids to optuna.Trial")
    study = compat.searcher_study(searcher)
    trials["t2"] = compat.live_trial(study, study.ask() and study.get_trials(deepcopy=False)[-1])
    assert searcher.suggest("t2") is not None and len(study.trials) == 2, _broken(
        "searcher_trials", "suggest no longer reuses a trial found in _ot_trials")


def test_searcher_finished():
    searcher = _searcher()
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"val/ppl": 3.0, "training_iteration": 1})
    assert compat.searcher_finished(searcher) == {"t1"}, _broken(
        "searcher_finished", "OptunaSearch._completed_trials changed")


def test_ray_storage_logger():
    import ray.train._internal.storage as module

    assert module.__name__ == compat.RAY_STORAGE_LOGGER and isinstance(getattr(module, "logger", None),
                                                                       logging.Logger), _broken(
        "RAY_STORAGE_LOGGER", "ray.train._internal.storage has no module logger")
