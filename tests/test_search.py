"""`ctkd-tune search` on a local Ray with the tiny preset: tables, Optuna states, divergence, resume, extension.

Run: pytest tests/test_search.py   (one local Ray for the module, 2 CPUs; ~2-3 minutes)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ctkd_tune.config import Config, ConfigError, load_config
from ctkd_tune.search.results import STATUSES, config_from_row, trial_outcome
from ctkd_tune.search.efficiency import search_progress, steps_to_target
from ctkd_tune.search.arms import FALLBACK_C, RECOMMENDED
from ctkd_tune.search.spaces import trial_config

ray = pytest.importorskip("ray")

QUICK = ["train.steps=12", "train.eval_every=4", "train.eval_batches=1", "train.batch_size=4"]
TRIAL_COLUMNS = {"trial_id", "optuna_trial", "optuna_state", "run", "status", "stop_reason", "final_val_ppl",
                 "best_val_ppl", "best_step", "final_temperature", "final_lambda", "steps", "wall_time_s", "path"}
CURVE_COLUMNS = {"trial_id", "optuna_trial", "step", "status", "val/ppl", "val/kl", "val/top1_agreement",
                 "train/kd_loss", "ctkd/temperature", "ctkd/lambda", "reported_at"}
OPTUNA_STATE = {"completed": "COMPLETE", "pruned": "PRUNED", "diverged": "FAIL", "error": "FAIL"}


@pytest.fixture(scope="module")
def base() -> Config:
    return load_config(preset="tiny", overrides=QUICK)


@pytest.fixture(scope="module")
def search(ray_cluster, base, tmp_path_factory):
    from ctkd_tune.search.driver import SearchSettings as S, run_search

    root = tmp_path_factory.mktemp("results")
    # ASHA aggressive enough to prune in a 4-trial search: rungs at steps 4 and 8
    result = run_search(base, S(name="s", num_samples=4, results_root=root, grace_period=4, reduction_factor=2,
                          verbose=0))
    return result, root


def _study(directory, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{directory / 'optuna.db'}")


def _assert_no_nan(path):
    table = pq.read_table(path)
    for name, column in zip(table.column_names, table.columns):
        if str(column.type) in ("double", "float"):
            assert not pc.any(pc.is_nan(column)).as_py(), f"NaN in {path.name}:{name}"


def test_search_writes_the_three_tables(search, base):
    result, _ = search
    d = result.directory
    trials, curves = pd.read_parquet(d / "trials.parquet"), pd.read_parquet(d / "curves.parquet")
    assert len(trials) == 4 and trials["trial_id"].is_unique and list(trials["optuna_trial"]) == [0, 1, 2, 3]
    assert TRIAL_COLUMNS | set(base.flat()) <= set(trials.columns)
    assert set(trials["status"]) <= set(STATUSES) - {"error", "interrupted"}
    assert CURVE_COLUMNS <= set(curves.columns)
    assert set(curves["trial_id"]) == set(trials["trial_id"])
    for _, row in trials.iterrows():  # the curve ends where the trial ended; trials share data and init seeds
        curve = curves[curves["trial_id"] == row["trial_id"]]
        assert curve["step"].is_monotonic_increasing and curve["step"].max() == row["steps"]
        assert row["best_val_ppl"] == pytest.approx(curve["val/ppl"].min())
        assert row["train.data_seed"] == row["train.init_seed"] == row["train.seed"] == 0
    completed = trials[trials["status"] == "completed"]
    assert len(completed) >= 1 and (completed["steps"] == base.train.steps).all()
    _assert_no_nan(d / "trials.parquet")
    _assert_no_nan(d / "curves.parquet")


def test_known_points_run_first(search):
    study = _study(search[0].directory, "s")
    searched = lambda point: {k: v for k, v in point.items()  # noqa: E731
                              if k not in ("temperature.lr", "loss.divergence")}  # not in the default space
    assert study.trials[0].params == searched(RECOMMENDED) and study.trials[1].params == searched(FALLBACK_C)


def test_best_config_is_the_best_completed_trial(search, base):
    result, _ = search
    path = result.directory / "best_config.yaml"
    assert path.read_text().splitlines()[0] == f"# ctkd-tune distill --config {path} --output runs/best"
    trials = pd.read_parquet(result.directory / "trials.parquet")
    best = trials[trials["status"] == "completed"].sort_values("final_val_ppl").iloc[0]
    params = _study(result.directory, "s").trials[int(best["optuna_trial"])].params
    trial_base = json.loads((result.directory / "search.json").read_text())["base"]  # base + shared seeds
    assert trial_base["train"]["data_seed"] == trial_base["train"]["init_seed"] == 0
    assert load_config(path) == trial_config(trial_base, params) == config_from_row(best.to_dict())


def test_optuna_states_match_the_table(search):
    result, _ = search
    trials = pd.read_parquet(result.directory / "trials.parquet")
    study = _study(result.directory, "s")
    for _, row in trials.iterrows():
        ot = study.trials[int(row["optuna_trial"])]
        assert ot.state.name == OPTUNA_STATE[row["status"]] == row["optuna_state"]
        assert ot.user_attrs["ray_trial_id"] == row["trial_id"] and ot.user_attrs["status"] == row["status"]
        if row["status"] == "pruned":  # its last value is its last intermediate value, at its last step
            assert row["steps"] < 12 and max(ot.intermediate_values) == row["steps"]
            assert ot.value == pytest.approx(row["final_val_ppl"])
        if row["status"] == "completed":
            assert ot.value == pytest.approx(row["final_val_ppl"]) and row["steps"] == 12


# --- the searcher's verdicts, without Ray -------------------------------------------------------------------------

def _searcher():
    from ctkd_tune.search.driver import CTKDOptunaSearch

    def space(trial):
        trial.suggest_float("schedule.lambda_max", 0.1, 1.0)

    return CTKDOptunaSearch(space=space, metric="val/ppl", mode="min", sampler=optuna.samplers.RandomSampler(0),
                            ppl_threshold=1000.0, runaway_patience=2)


@pytest.mark.parametrize("last, error, state", [
    ({"val/ppl": 300.0, "step": 12, "status": "completed"}, False, "COMPLETE"),
    ({"val/ppl": 300.0, "step": 4, "status": "running"}, False, "PRUNED"),  # stopped by ASHA
    ({"val/ppl": 5000.0, "step": 4, "status": "running"}, False, "FAIL"),  # stopped by the divergence stopper
    ({"val/ppl": 300.0, "step": 8, "status": "running", "ctkd/evals_at_bound": 2, "ctkd/temperature": 5.0},
     False, "FAIL"),  # temperature runaway
    ({"val/ppl": 512.0, "step": 3, "status": "diverged", "stop_reason": "diverged at step 3: non-finite loss"},
     False, "FAIL"),
    (None, True, "FAIL"),  # the trial raised
])
def test_searcher_tells_optuna_the_truth(last, error, state):
    searcher = _searcher()
    config = searcher.suggest("t1")
    assert config["optuna_trial"] == 0
    searcher.on_trial_result("t1", {"val/ppl": 400.0, "step": 2, "status": "running"})
    searcher.on_trial_complete("t1", result=last, error=error)
    trial = searcher._ot_study.trials[0]
    assert trial.state.name == state
    assert trial.user_attrs["status"] == trial_outcome(last, error, 1000.0, 2)[0]
    if state == "PRUNED":  # Ray never passes the stopping result to on_trial_result: it is recorded here
        assert trial.intermediate_values == {2: 400.0, 4: 300.0} and trial.value == 300.0
    if state == "COMPLETE":
        assert trial.value == 300.0
    assert all(math.isfinite(v) for v in trial.intermediate_values.values())


@pytest.mark.parametrize("ray_status, last, status", [
    ("PENDING", {}, "pending"), ("PAUSED", {"step": 4}, "pending"), ("RUNNING", {"step": 4}, "running"),
    ("ERROR", {"step": 4, "val/ppl": 300.0}, "error"),
    ("TERMINATED", {"val/ppl": 300.0, "step": 12, "status": "completed"}, "completed"),
    ("TERMINATED", {"val/ppl": 300.0, "step": 4, "status": "running"}, "pruned"),
    ("TERMINATED", {"val/ppl": 5000.0, "step": 4, "status": "running"}, "diverged"),
])
def test_the_live_console_and_the_tables_share_one_verdict(ray_status, last, status):
    from ctkd_tune.search.results import TrialStatus, live_status

    got = live_status(ray_status, last, 1000.0, 2)
    assert got == status and isinstance(got, TrialStatus)
    if ray_status in ("ERROR", "TERMINATED"):
        assert got == trial_outcome(last, ray_status == "ERROR", 1000.0, 2)[0]


def test_statuses_are_an_enum_whose_values_the_tables_keep():
    from ctkd_tune.search.results import TrialStatus, build_tables

    assert set(STATUSES) == {"completed", "pruned", "diverged", "error", "interrupted", "running"}
    assert trial_outcome(None, False, 1000.0, 2) == (TrialStatus.ERROR, "stopped before it ran")
    base = load_config(preset="tiny").to_dict()
    record = {"config": {}, "metrics": {"val/ppl": 3.0, "step": 2, "status": "completed"},
              "reports": [{"val/ppl": 3.0, "step": 2, "status": "completed"}], "error": None, "path": "/x/t1"}
    from ctkd_tune.search.results import TrialRecord

    rows, _ = build_tables([TrialRecord(**record)], base, ppl_threshold=1000.0, runaway_patience=2)
    assert type(rows[0]["status"]) is str and rows[0]["status"] == "completed"


@pytest.mark.parametrize("on_disk, resumes_from", [
    (["checkpoint_000004", "checkpoint_000005"], "checkpoint_000005"),  # written after the snapshot: the newest
    (["checkpoint_000004", "checkpoint_000005-cut"], "checkpoint_000004"),  # the newest copy was cut short
    (["checkpoint_000003"], "checkpoint_000003"),  # the snapshot's own checkpoint is there: nothing to do
    ([], ""),  # nothing left: the trial starts again
])
def test_a_trial_whose_snapshot_checkpoint_is_gone_resumes_from_the_newest_whole_one(tmp_path, on_disk, resumes_from):
    import torch
    from types import SimpleNamespace
    from ray.train import CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from ray.tune.trainable.metadata import _TrainingRunMetadata
    from ctkd_tune.search.searcher import repoint_missing_checkpoint

    for name in on_disk:
        folder = tmp_path / name.removesuffix("-cut")
        folder.mkdir()
        torch.save({"step": 1}, folder / "state.pt")
        if name.endswith("-cut"):
            (folder / "state.pt").write_bytes((folder / "state.pt").read_bytes()[:-30])
    run_metadata = _TrainingRunMetadata()
    run_metadata.checkpoint_manager = manager = _CheckpointManager(CheckpointConfig(num_to_keep=2))
    for name in ("checkpoint_000002", "checkpoint_000003"):  # what the snapshot holds
        manager.register_checkpoint(_TrainingResult(ray.tune.Checkpoint(str(tmp_path / name)), {"step": 60}))
    trial = SimpleNamespace(run_metadata=run_metadata)

    outcome = repoint_missing_checkpoint(trial)
    latest = manager.latest_checkpoint_result
    if resumes_from == "checkpoint_000003":
        assert outcome is None and latest.checkpoint.path == str(tmp_path / "checkpoint_000003")
    elif resumes_from:
        assert outcome == resumes_from and latest.checkpoint.path == str(tmp_path / resumes_from)
        assert latest.metrics == {"step": 60}  # Ray's view of the trial is unchanged
        assert all(Path(r.checkpoint.path).exists() for r in manager.best_checkpoint_results)
    else:
        assert outcome == "" and latest is None and manager.best_checkpoint_results == []


# --- divergence ---------------------------------------------------------------------------------------------------

def test_diverging_trials_are_recorded_with_a_reason(ray_cluster, base, tmp_path):
    from ctkd_tune.search.driver import SearchSettings as S, run_search

    space = tmp_path / "lr.yaml"
    space.write_text("train.lr: {type: categorical, choices: [1.0, 100.0]}\n")
    # lr 1: val/ppl far above 10 × its step-0 value (relative thresholds) at the first evaluation; lr 100: a non-finite gradient at step 1-2
    result = run_search(base, S(space=str(space), name="div", num_samples=2, results_root=tmp_path,
                          points=[{"train.lr": 1.0}, {"train.lr": 100.0}], verbose=0))
    trials = pd.read_parquet(result.directory / "trials.parquet").set_index("train.lr")
    assert list(trials["status"]) == ["diverged", "diverged"]
    assert "rose above 10 × its start" in trials.loc[1.0, "stop_reason"]
    assert trials.loc[1.0, "student_val_ppl_start"] > 0 and trials.loc[1.0, "teacher_val_ppl"] > 0
    assert "non-finite" in trials.loc[100.0, "stop_reason"]
    assert all(t.state.name == "FAIL" for t in _study(result.directory, "div").trials)
    assert not (result.directory / "best_config.yaml").exists()
    curves = pd.read_parquet(result.directory / "curves.parquet")
    assert (curves["val/ppl"].notna()).all()
    _assert_no_nan(result.directory / "trials.parquet")
    _assert_no_nan(result.directory / "curves.parquet")


# --- resume and extension -----------------------------------------------------------------------------------------

def _second_trial_checkpointed(run) -> bool:
    """One trial at a time, so a second trial folder means the first has ended. Has the driver processed two of
    the newest one's reports (its progress.csv, written by the driver)? Then the checkpoint of the first is
    registered with Tune, not merely on disk (a checkpoint folder alone can precede that: seen in CI)."""
    folders = sorted(p for p in run.glob("t[0-9]*") if p.is_dir()) if run.exists() else []
    if len(folders) < 2:
        return False
    try:
        return len(pd.read_csv(folders[-1] / "progress.csv")) >= 2
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return False


def test_resume_after_ctrl_c_runs_no_trial_twice(ray_cluster, tmp_path):
    from ctkd_tune.search.driver import SearchSettings as S, run_search

    # trials of ~5 s (800 tiny steps, a checkpoint every 20), one at a time: a wide window to interrupt in
    sets = ["train.steps=800", "train.eval_every=20", "train.eval_batches=1"]
    cmd = [sys.executable, "-m", "ctkd_tune.cli", "search", "--preset", "tiny", "--name", "r", "--num-samples", "3",
           "--max-concurrent", "1", "--address", ray_cluster, "--results-dir", str(tmp_path),
           *(a for o in sets for a in ("--set", o))]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # interrupt once a trial finished and the next one has checkpointed: read from the trials' own folders, never
    # from the study's SQLite database, which the driver is writing (a reader could make its write fail as locked)
    run = tmp_path / "r" / "ray" / "r-run1"
    deadline = time.time() + 600
    while time.time() < deadline and driver.poll() is None and not _second_trial_checkpointed(run):
        time.sleep(0.2)
    if driver.poll() is not None:
        pytest.fail("the search ended before it could be interrupted")
    driver.send_signal(signal.SIGINT)  # Ctrl-C
    assert driver.wait(timeout=120) == 130
    before = pd.read_parquet(tmp_path / "r" / "trials.parquet")
    # Ctrl-C lands while a trial runs; depending on timing the driver may already have finished one or two.
    assert "interrupted" in set(before["status"]) and 2 <= len(before) <= 3
    assert (before["status"] != "interrupted").any()
    finished = before[before["status"] != "interrupted"].iloc[0]

    result = run_search(None, S(name="r", results_root=tmp_path, verbose=0), resume=True)
    after = result.trials
    assert len(after) == 3 and after["trial_id"].is_unique and after["optuna_trial"].is_unique
    assert "interrupted" not in set(after["status"])
    assert set(before["trial_id"]) <= set(after["trial_id"])
    same = after.set_index("trial_id").loc[finished["trial_id"]]
    assert same["wall_time_s"] == finished["wall_time_s"] and same["final_val_ppl"] == finished["final_val_ppl"]
    study = _study(result.directory, "r")
    assert len(study.trials) == 3 and not [t for t in study.trials if not t.state.is_finished()]
    resumed = before[before["status"] == "interrupted"].iloc[0]
    steps = pd.read_csv(os.path.join(resumed["path"], "progress.csv"))["step"].tolist()
    # resumed from its last checkpoint, not from step 0: the first evaluation was reported once
    assert steps.count(20) == 1 and steps[-1] == after.set_index("trial_id").loc[resumed["trial_id"], "steps"]


def test_a_second_run_adds_trials_to_the_same_study(search, tmp_path):
    from ctkd_tune.search.driver import SearchSettings as S, run_search

    result, root = search
    shutil.copytree(result.directory, tmp_path / "s", ignore=shutil.ignore_patterns("ray"))
    # as `ctkd-tune search --name s --num-samples 2`: the experiment's own base config and space
    again = run_search(None, S(name="s", num_samples=2, results_root=tmp_path, grace_period=4, verbose=0))
    study = _study(again.directory, "s")
    assert len(study.trials) == 6 and all(t.state.is_finished() for t in study.trials)
    assert all(t.params not in (RECOMMENDED, FALLBACK_C) for t in study.trials[4:])  # points are not re-enqueued
    trials = pd.read_parquet(again.directory / "trials.parquet")
    assert list(trials["optuna_trial"]) == list(range(6)) and trials["trial_id"].is_unique
    assert list(trials["run"]) == ["s-run1"] * 4 + ["s-run2"] * 2
    with pytest.raises(Exception, match="another base config"):
        run_search(load_config(preset="tiny"), S(name="s", num_samples=1, results_root=tmp_path))


# --- the baseline of the efficiency benchmark: random search, no early stopping ----------------------------------

def test_random_search_without_early_stopping_runs_every_trial_to_the_end(ray_cluster, base, tmp_path):
    from ctkd_tune.search.driver import SearchSettings as S, run_search

    # grace period 4 would prune at step 4 or 8 under ASHA (as in the `search` fixture); without a scheduler none is
    result = run_search(base, S(name="rand", num_samples=3, results_root=tmp_path, grace_period=4, seed=3,
                          sampler="random", scheduler="none", points=[], verbose=0))
    trials, curves = result.trials, result.curves
    assert list(trials["status"]) == ["completed"] * 3 and (trials["steps"] == base.train.steps).all()
    settings = json.loads((result.directory / "search.json").read_text())["settings"]
    assert (settings["sampler"], settings["scheduler"]) == ("random", "none")
    # random sampling with seed 3 proposes what optuna's RandomSampler(3) proposes on the same space
    from ctkd_tune.search.spaces import load_space

    replay = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    replay.optimize(lambda t: load_space("search_spaces.default:default_space")(t) or 0.0, n_trials=3)
    assert [t.params for t in _study(result.directory, "rand").trials] == [t.params for t in replay.trials]
    steps, total = steps_to_target(trials, curves, trials["final_val_ppl"].min())
    assert total == 3 * base.train.steps and base.train.steps <= steps <= total
    for _, curve in curves.groupby("trial_id"):
        assert curve.sort_values("step")["reported_at"].is_monotonic_increasing


def test_unknown_sampler_or_scheduler_is_an_error_before_ray(base, tmp_path):
    from ctkd_tune.search.driver import SearchSettings as S, run_search

    with pytest.raises(ConfigError, match="--sampler must be one of tpe, random, got 'grid'"):
        run_search(base, S(name="x", results_root=tmp_path, sampler="grid"))
    with pytest.raises(ConfigError, match="--scheduler must be one of asha, none"):
        run_search(base, S(name="x", results_root=tmp_path, scheduler="hyperband"))
    assert not (tmp_path / "x" / "search.json").exists()


def test_steps_to_target_counts_what_every_trial_had_run_by_then():
    # a and b run at once; b is pruned at step 50 (its truncated value looked best); c starts after b; a
    # finishes first, c beats it later
    trials = pd.DataFrame({"trial_id": ["a", "b", "c"], "status": ["completed", "pruned", "completed"],
                           "final_val_ppl": [110.0, 95.0, 100.0]})
    curves = pd.DataFrame({"trial_id": ["a", "b", "a", "c", "a", "c", "c"], "step": [25, 25, 50, 25, 100, 50, 100],
                           "reported_at": [1.0, 1.1, 2.0, 2.5, 4.0, 5.0, 7.0]})
    curves = pd.concat([curves, pd.DataFrame({"trial_id": ["b"], "step": [50], "reported_at": [2.1]})])
    assert steps_to_target(trials, curves, 112.0) == (100 + 50 + 25, 250)  # a done at t=4: c had reached 25
    assert steps_to_target(trials, curves, 101.0) == (250, 250)
    assert steps_to_target(trials, curves, 98.0) == (None, 250)  # b's 95 is pruned, not a finished config
    assert steps_to_target(trials.iloc[:0], curves.iloc[:0], 1e9) == (None, 0)
    progress = search_progress(trials, curves)  # one row per trial, in the order they ended
    assert progress["trial_id"].tolist() == ["b", "a", "c"] and progress["steps_spent"].tolist() == [100, 175, 250]
    assert progress["best_so_far"].tolist()[1:] == [110.0, 100.0] and pd.isna(progress["best_so_far"].iloc[0])
    with pytest.raises(ValueError, match="reported_at"):
        steps_to_target(trials, curves.drop(columns="reported_at"), 112.0)


def test_default_search_budget_applies_only_without_a_config_or_preset():
    from ctkd_tune.search.driver import DEFAULT_BUDGET, base_config

    cfg = base_config()
    assert cfg.model.teacher == "builtin:shakespeare" and cfg.train.steps == DEFAULT_BUDGET["train.steps"]
    assert base_config(overrides=["train.steps=7"]).train.steps == 7
    assert base_config(preset="shakespeare") == load_config(preset="shakespeare")  # a preset: exactly as distill


# --- connecting to a cluster ----------------------------------------------------------------------------------------

def test_an_unreachable_cluster_is_a_one_line_error_and_writes_nothing(monkeypatch, tmp_path, capsys):
    from ctkd_tune.cli import main

    def refuse(*args, **kwargs):  # what ray.init raises after its client times out
        raise ConnectionError("ray client connection timeout\nmore detail")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    code = main(["search", "--preset", "tiny", "--address", "ray://head:10001", "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("ctkd-tune: error: --address ray://head:10001: cannot connect to Ray (ConnectionError: "
                          "ray client connection timeout); if the cluster uses token auth")
    assert list(tmp_path.iterdir()) == []
    assert main(["validate", "--experiment", str(tmp_path), "--address", "auto"]) == 2  # no experiment: first
    assert "no trials.parquet" in capsys.readouterr().err


def test_without_an_address_a_new_local_ray_is_started_never_one_found_on_the_machine(monkeypatch):
    from ctkd_tune.search.cluster import connect

    calls = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert connect(None, include_dashboard=False)[0] is True
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    connect(None)
    assert calls[0]["address"] == "local" and calls[1]["address"] == "10.0.0.1:6379"


def test_a_ray_client_sends_its_token_when_one_is_at_hand(monkeypatch, tmp_path):
    from ctkd_tune.search.cluster import client_auth_from_env

    monkeypatch.delitem(sys.modules, "ray")  # as in the CLI, before Ray is imported
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "no-token"))
    client_auth_from_env("ray://head:10001")
    assert "RAY_AUTH_MODE" not in os.environ  # no token: nothing to send
    (tmp_path / "no-token").write_text("secret")
    client_auth_from_env("auto")
    assert "RAY_AUTH_MODE" not in os.environ  # only ray:// clients need it
    client_auth_from_env("ray://head:10001")
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the user's own choice is kept
    client_auth_from_env("ray://head:10001")
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
