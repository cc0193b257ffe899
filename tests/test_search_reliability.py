"""A search survives what stops it: kill -9 of its driver at three moments, a second driver, bad input, a full
disk; a local search listens on 127.0.0.1 only and leaves no scratch or Ray session folder behind.

Run: pytest tests/test_search_reliability.py   (one local Ray for the module, 2 CPUs; a few minutes)

Interrupting tests synchronise on what the driver writes (its study, its tables, a file a test hook touches),
with generous deadlines; never on sleeps.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import sqlalchemy.exc

from ctkd_tune.cli import main
from ctkd_tune.config import ConfigError, load_config
from ctkd_tune.search.lock import experiment_lock
from test_validate import fabricate_experiment

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 900  # generous: on a shared 2-core machine a trial's first report can take minutes
# trials of a few seconds each (tiny model, 300 steps), an evaluation every 20 steps: wide windows to kill in
LONG = ["train.steps=300", "train.eval_every=20", "train.eval_batches=1"]


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def _study(directory: Path):
    return optuna.load_study(study_name=directory.name, storage=f"sqlite:///{directory / 'optuna.db'}")


def _wait_for(condition, driver, what: str) -> None:
    """Poll `condition()` until true; fail if the driver ended first or the deadline passed."""
    deadline = time.time() + DEADLINE_S
    while time.time() < deadline:
        if driver.poll() is not None:
            pytest.fail(f"the driver ended (rc {driver.returncode}) before {what}")
        try:
            if condition():
                return
        except (KeyError, OSError, ValueError, sqlalchemy.exc.OperationalError):  # not there yet, or being written
            pass
        time.sleep(0.2)
    pytest.fail(f"no {what} within {DEADLINE_S} s")


# --- bad input: exit 2, one line, nothing written, Ray never started ---------------------------------------------

@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", refuse)


def _one_line_error(capsys, code, expected_code=2) -> str:
    err = capsys.readouterr().err
    assert code == expected_code and err.count("\n") == 1 and err.startswith("ctkd-tune: error: "), err
    return err


@pytest.mark.parametrize("args, message", [
    (["--set", "schedule.lambda_max=inf"], "schedule.lambda_max must be a finite number, got inf"),
    (["--set", "temperature.lr=inf"], "temperature.lr must be a finite number, got inf"),
    (["--set", "temperature.tau_max=.inf"], "temperature.tau_max must be a finite number"),
    (["--set", "train.lr=nan"], "train.lr must be > 0, got nan"),
    (["--cpus-per-trial", "1000"], "--cpus-per-trial must be in (0, "),
    (["--gpus-per-trial", "64"], "--gpus-per-trial 64 but this machine has"),
    (["--cpus-per-trial", "inf"], "--cpus-per-trial must be a finite number > 0"),
])
def test_bad_search_input_is_one_line_before_ray(args, message, no_ray, tmp_path, capsys):
    code = main(["search", "--preset", "tiny", "--name", "bad", "--results-dir", str(tmp_path), *args])
    assert message in _one_line_error(capsys, code)
    assert list(tmp_path.iterdir()) == []


def test_a_space_with_an_infinite_bound_is_one_line(no_ray, tmp_path, capsys):
    space = tmp_path / "inf.yaml"
    space.write_text("temperature.tau_max: {type: float, low: 3.0, high: .inf}\n")
    code = main(["search", "--preset", "tiny", "--space", str(space), "--results-dir", str(tmp_path / "r")])
    assert "temperature.tau_max: high must be finite" in _one_line_error(capsys, code)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("kind, content, message", [
    ("jsonl", '{"text": "To be"}\n{"text": 42}\n', "line 2: text column 'text' holds a int, not a string"),
    ("jsonl", '{"text": "To be"}\n{"text": \n', "line 2: not valid JSON"),
    ("parquet", None, "text column 'text' holds int64 values, not strings"),
    ("block", None, "data.block_size (1000) is longer than model.teacher's context (256 tokens)"),
])
def test_bad_data_is_one_line_naming_the_file(kind, content, message, tmp_path, capsys):
    data = tmp_path / f"data.{'parquet' if kind == 'parquet' else 'jsonl'}"
    if kind == "parquet":
        pd.DataFrame({"text": [1, 2, 3]}).to_parquet(data)
    else:
        data.write_text(content or '{"text": "To be or not to be"}\n')
    overrides = ["data.block_size=1000"] if kind == "block" else [f"data.source={data}"]
    code = main(["distill", "--preset", "tiny", *_sets(overrides), "--output", str(tmp_path / "run")])
    err = _one_line_error(capsys, code)
    assert message in err and (kind == "block" or str(data) in err)
    assert not (tmp_path / "run").exists() or list((tmp_path / "run").iterdir()) == []


# --- one driver per experiment; damaged or renamed experiments ----------------------------------------------------

def _fake_search(directory: Path) -> Path:
    """results/NAME/search.json of a search that never ran (enough for the checks before Ray)."""
    directory.mkdir(parents=True)
    base = load_config(preset="tiny")
    settings = {"params": ["temperature.tau_max"], "points": [], "grace_period": 4, "max_t": 60,
                "reduction_factor": 2, "runaway_patience": 3, "ppl_threshold": 2000.0, "seed": 0,
                "cpus_per_trial": 1.0, "gpus_per_trial": 0.0, "sampler": "tpe", "scheduler": "asha"}
    (directory / "search.json").write_text(json.dumps({"name": directory.name, "base": base.to_dict(),
                                                       "space": None, "settings": settings, "runs": []}))
    return directory


def test_a_second_driver_is_refused_naming_the_first(no_ray, tmp_path, capsys):
    exp = _fake_search(tmp_path / "s")
    with experiment_lock(exp, "search"):  # the running driver (here: this process, through another open file)
        code = main(["search", "--name", "s", "--resume", "--results-dir", str(tmp_path)])
        err = _one_line_error(capsys, code)
        assert f"pid {os.getpid()} on " in err and "`ctkd-tune search`" in err
    with experiment_lock(exp, "search"):  # released on exit: the next driver takes it
        pass


def test_a_dead_drivers_lock_is_not_in_the_way(tmp_path):
    exp = _fake_search(tmp_path / "s")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom ctkd_tune.search.lock import experiment_lock\n"
                               f"with experiment_lock({str(exp)!r}, 'search'):\n    print('held', flush=True)\n"
                               "    sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(ConfigError, match=f"pid {holder.pid} on"):
        with experiment_lock(exp, "search"):
            pass
    holder.kill()  # kill -9: no chance to clean up
    holder.wait()
    with experiment_lock(exp, "search"):
        pass


def test_damaged_database_and_renamed_folder_are_one_line(no_ray, tmp_path, capsys):
    exp = _fake_search(tmp_path / "s")
    (exp / "optuna.db").write_bytes(b"not a database" * 100)
    code = main(["search", "--name", "s", "--resume", "--results-dir", str(tmp_path)])
    assert "optuna.db: unreadable Optuna database" in _one_line_error(capsys, code)
    exp.rename(tmp_path / "copy")
    code = main(["search", "--name", "copy", "--resume", "--results-dir", str(tmp_path)])
    assert "holds the search 's' (renamed?)" in _one_line_error(capsys, code)


@pytest.mark.parametrize("change, message", [
    ({"sampler": "grid"}, "settings.sampler must be one of tpe, random, got 'grid'"),
    ({"max_t": "60"}, "settings.max_t must be int, got '60'"),
    ({"grace_period": True}, "settings.grace_period must be int, got True"),
    ({"typo": 1}, "unknown settings typo"),
    ({"ppl_threshold": "high"}, "settings.ppl_threshold must be float or null, got 'high'"),
    ({"points": None}, "settings.points must be list, got None"),
])
def test_damaged_settings_in_search_json_are_one_line(change, message, no_ray, tmp_path, capsys):
    exp = _fake_search(tmp_path / "s")
    state = json.loads((exp / "search.json").read_text())
    state["settings"].update(change)
    (exp / "search.json").write_text(json.dumps(state))
    code = main(["search", "--name", "s", "--resume", "--results-dir", str(tmp_path)])
    line = _one_line_error(capsys, code)
    assert "search.json" in line and message in line


def test_search_json_settings_read_back_as_study_settings_and_old_files_still_read(tmp_path):
    from ctkd_tune.search.folder import read_state
    from ctkd_tune.search.settings import StudySettings

    exp = _fake_search(tmp_path / "s")
    written = json.loads((exp / "search.json").read_text())["settings"]
    fixed = read_state(exp / "search.json")["settings"]
    assert isinstance(fixed, StudySettings) and fixed.to_dict() == written
    state = json.loads((exp / "search.json").read_text())
    for key in ("sampler", "scheduler"):  # search.json files written before the two options
        del state["settings"][key]
    state["settings"]["reduction_factor"] = 3  # an int where a float goes: JSON's own choice
    (exp / "search.json").write_text(json.dumps(state))
    old = read_state(exp / "search.json")["settings"]
    assert (old.sampler, old.scheduler, old.reduction_factor) == ("tpe", "asha", 3)
    with pytest.raises(ConfigError, match="settings lack max_t"):
        StudySettings.from_dict({k: v for k, v in written.items() if k != "max_t"})


# --- interrupted experiments, export into a folder, a full disk --------------------------------------------------

def test_an_interrupted_experiment_says_how_to_continue_and_uses_what_finished(tmp_path, capsys):
    exp = fabricate_experiment(tmp_path / "e")
    trials = pd.read_parquet(exp / "trials.parquet")
    trials.loc[3, "status"] = "interrupted"
    trials.to_parquet(exp / "trials.parquet")
    assert main(["export", "--experiment", str(exp), "--output", str(tmp_path / "out") + "/"]) == 0
    err = capsys.readouterr().err
    assert "did not finish (1 trials interrupted or still running)" in err
    assert f"ctkd-tune search --name e --resume --results-dir {tmp_path}" in err
    assert load_config(tmp_path / "out" / "recommended.yaml")  # --output DIR/ writes into the folder
    (tmp_path / "taken").write_text("a file")
    code = main(["export", "--experiment", str(exp), "--output", str(tmp_path / "taken" / "x.yaml")])
    note, error = capsys.readouterr().err.splitlines()  # the note, then one line of error
    assert code == 2 and note.startswith("ctkd-tune: note: ") and "cannot write" in error


def test_a_damaged_table_names_the_command_that_rebuilds_it(tmp_path, capsys):
    exp = fabricate_experiment(tmp_path / "e")
    (exp / "trials.parquet").write_bytes(b"PAR1 truncated")
    code = main(["report", "--experiment", str(exp)])
    assert f"rebuild it with `ctkd-tune search --name e --rebuild-tables --results-dir {tmp_path}`" in \
        _one_line_error(capsys, code)


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_what_was_written(tmp_path, capsys, monkeypatch):
    import pyarrow.parquet as pq

    exp = fabricate_experiment(tmp_path / "e")
    assert main(["export", "--experiment", str(exp)]) == 0
    before = (exp / "recommended.yaml").read_text()
    capsys.readouterr()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)  # every atomic text write goes through it
    code = main(["export", "--experiment", str(exp)])
    err = _one_line_error(capsys, code, expected_code=1)
    assert f"{exp / 'recommended.yaml'}: No space left on device" in err
    monkeypatch.undo()
    assert (exp / "recommended.yaml").read_text() == before and not list(exp.glob(".recommended.yaml.*"))
    from ctkd_tune.search.results import write_tables

    tables = pq.read_table(exp / "trials.parquet")
    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(OSError, match="No space left") as caught:
        write_tables(exp, [{"trial_id": "x", "optuna_trial": 99}], [])
    assert caught.value.filename == str(exp / "trials.parquet")
    monkeypatch.undo()
    assert pq.read_table(exp / "trials.parquet").equals(tables)


def test_a_trial_run_again_under_a_new_ray_id_keeps_one_row(tmp_path):
    """kill -9 before Ray's snapshot, then --resume: the orphaned Optuna trial runs again under a new Ray id; the
    tables keep its finished row and curve, not the dead one's 'running' row (seen once in CI: 5 rows for 4)."""
    from ctkd_tune.search.results import write_tables

    row = lambda tid, n, status, steps: {"trial_id": tid, "optuna_trial": n, "status": status,  # noqa: E731
                                         "steps": steps, "final_val_ppl": 100.0 if steps else None}
    curve = lambda tid, n, step: {"trial_id": tid, "optuna_trial": n, "step": step, "val/ppl": 110.0}  # noqa: E731
    write_tables(tmp_path, [row("a", 0, "completed", 300), row("dead", 2, "running", 0)],
                 [curve("a", 0, 300), curve("dead", 2, 25)])
    trials, curves = write_tables(tmp_path, [row("b", 1, "completed", 300), row("new", 2, "completed", 300),
                                             row("dead", 2, "running", 25)], [curve("new", 2, 300)])
    assert list(trials["optuna_trial"]) == [0, 1, 2] and list(trials["trial_id"]) == ["a", "b", "new"]
    assert set(curves["trial_id"]) == {"a", "new"}
    again, _ = write_tables(tmp_path, [row("x", None, "completed", 3), row("y", None, "completed", 3)], [])
    assert {"x", "y"} <= set(again["trial_id"])  # rows without an Optuna number are never merged


# --- kill -9 of the driver at three moments, then --resume --------------------------------------------------------

HOOK = """
import sys, time
from pathlib import Path
import ctkd_tune.search.results as results, ctkd_tune.search.driver as search
flag, final = Path(sys.argv[1]), []
write_results, write_parquet = search.final_tables, results.atomic_write_parquet
def final_write(*args, **kwargs):
    final.append(True)
    return write_results(*args, **kwargs)
def slow_parquet(path, rows):  # the final write has replaced trials.parquet; it hangs before curves.parquet
    if final and Path(path).name == "curves.parquet":
        flag.touch()
        time.sleep(3600)
    return write_parquet(path, rows)
search.final_tables, results.atomic_write_parquet = final_write, slow_parquet
from ctkd_tune.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_kill_9_at_three_moments_then_resume_leaves_a_consistent_study(ray_cluster, tmp_path):
    from ctkd_tune.search.driver import SearchSettings, run_search

    exp = tmp_path / "k"
    common = ["--name", "k", "--address", ray_cluster, "--results-dir", str(tmp_path)]
    first = [sys.executable, "-m", "ctkd_tune.cli", "search", "--preset", "tiny", "--num-samples", "4",
             "--max-concurrent", "2", "--scheduler", "none", *common, *_sets(LONG)]
    resume = [sys.executable, "-m", "ctkd_tune.cli", "search", "--resume", *common]

    def trials(finished: bool):
        return [t for t in _study(exp).get_trials(deepcopy=False) if t.state.is_finished() == finished]

    # 1. before any trial finished: one reports, none ended
    driver = subprocess.Popen(first, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: (exp / "ray" / "k-run1").exists() and any(t.intermediate_values for t in trials(False))
              and not trials(True), driver, "a trial reporting")
    driver.kill()
    driver.wait()
    # 2. right after a trial finished (its row is on disk) while another one runs
    driver = subprocess.Popen(resume, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: (pd.read_parquet(exp / "trials.parquet")["status"] == "completed").any()
              and any(t.intermediate_values for t in trials(False)), driver, "a finished trial next to a running one")
    driver.kill()
    driver.wait()
    partial = pd.read_parquet(exp / "trials.parquet")
    assert (partial["status"] == "completed").any()
    # 3. during the final write: trials.parquet rewritten, curves.parquet not yet
    flag = tmp_path / "final-write"
    driver = subprocess.Popen([sys.executable, "-c", HOOK, str(flag), *resume[3:]], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    _wait_for(flag.exists, driver, "the final write")
    driver.kill()
    driver.wait()

    result = run_search(None, SearchSettings(name="k", results_root=tmp_path, verbose=0), resume=True)
    table, curves, study = result.trials, result.curves, _study(exp)
    assert not result.interrupted and len(table) == 4 and table["trial_id"].is_unique
    assert set(table["status"]) == {"completed"}
    # exactly one study trial per Tune trial, none left RUNNING, no parameter set proposed twice
    assert sorted(table["optuna_trial"]) == [t.number for t in study.trials] == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 4
    assert all(steps.is_unique for _, steps in curves.groupby("trial_id")["step"])  # no step reported twice
    # nothing written before the kills is lost: a finished trial keeps its row (same Ray trial), and every study
    # trial of the earlier table is still there. A trial that was *running* at a kill keeps its Ray id only when
    # Ray's snapshot had caught it; otherwise the resume re-runs it (the same Optuna trial) under a new Ray id and
    # the table keeps that run's row (one row per Optuna trial) — which of the two happens depends on timing.
    finished_before = partial[partial["status"] == "completed"]
    assert set(finished_before["trial_id"]) <= set(table["trial_id"])
    assert set(partial["optuna_trial"]) <= set(table["optuna_trial"])
    for _, row in finished_before.iterrows():
        final = table[table["trial_id"] == row["trial_id"]].iloc[0]
        assert final["optuna_trial"] == row["optuna_trial"] and final["final_val_ppl"] == row["final_val_ppl"]
    # and the experiment takes more trials
    more = run_search(None, SearchSettings(name="k", num_samples=1, results_root=tmp_path, verbose=0))
    assert len(more.trials) == 5 and all(t.state.is_finished() for t in _study(exp).trials)


def _snapshot_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints Ray's newest experiment snapshot in `run_dir` holds for its unfinished trials."""
    from ray.tune.experiment.trial import Trial

    state = json.loads(max(run_dir.glob("experiment_state-*.json")).read_text())
    held = []
    for trial_json, run_metadata in state["trial_data"]:
        trial = Trial.from_json_state(trial_json, stub=True)
        trial.restore_run_metadata(run_metadata)
        if trial.status in ("RUNNING", "PENDING", "PAUSED") and trial.checkpoint is not None:
            held.append(Path(trial.checkpoint.path))
    return held


def test_resume_survives_a_snapshot_whose_checkpoint_was_deleted(ray_cluster, tmp_path, capsys):
    """kill -9 between a trial's newest checkpoint (which deletes the oldest of num_to_keep) and Ray's next
    experiment snapshot leaves a snapshot naming a deleted checkpoint; the resumed trial carries on from the newest
    checkpoint still in its folder, or from the start, and completes (CI once saw it end in ERROR)."""
    from ctkd_tune.search.driver import SearchSettings, run_search

    exp = tmp_path / "d"
    driver = subprocess.Popen([sys.executable, "-m", "ctkd_tune.cli", "search", "--preset", "tiny", "--name", "d",
                               "--num-samples", "2", "--max-concurrent", "2", "--scheduler", "none",
                               "--address", ray_cluster, "--results-dir", str(tmp_path), *_sets(LONG)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: len(_snapshot_checkpoints(exp / "ray" / "d-run1")) > 0, driver, "a snapshot with a checkpoint")
    driver.kill()
    driver.wait()
    deleted = _snapshot_checkpoints(exp / "ray" / "d-run1")
    for checkpoint in deleted:  # what a later checkpoint would have deleted
        shutil.rmtree(checkpoint)

    result = run_search(None, SearchSettings(name="d", results_root=tmp_path, verbose=0), resume=True)
    assert capsys.readouterr().out.count("is gone (deleted after Ray's last snapshot)") == len(deleted)
    assert set(result.trials["status"]) == {"completed"} and len(result.trials) == 2
    assert all(t.state.name == "COMPLETE" for t in _study(exp).trials)
    for _, curve in result.curves.groupby("trial_id"):
        assert curve["step"].is_unique and curve["step"].max() == 300


def test_sigterm_stops_like_ctrl_c_and_resume_completes(ray_cluster, tmp_path):
    from ctkd_tune.search.driver import SearchSettings, run_search

    exp = tmp_path / "t"
    driver = subprocess.Popen([sys.executable, "-m", "ctkd_tune.cli", "search", "--preset", "tiny", "--name", "t",
                               "--num-samples", "3", "--max-concurrent", "1", "--address", ray_cluster,
                               "--results-dir", str(tmp_path), *_sets(LONG)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: (pd.read_parquet(exp / "trials.parquet")["status"] == "completed").any() and any(
        t.state.name == "RUNNING" and t.intermediate_values for t in _study(exp).get_trials(deepcopy=False)),
        driver, "a finished trial and a running one")
    driver.send_signal(signal.SIGTERM)
    out, _ = driver.communicate(timeout=DEADLINE_S)
    assert driver.returncode == 130, out[-2000:]
    assert "continue it with: ctkd-tune search --name t --resume" in out
    before = pd.read_parquet(exp / "trials.parquet")
    assert {"completed", "interrupted"} <= set(before["status"])
    result = run_search(None, SearchSettings(name="t", results_root=tmp_path, verbose=0), resume=True)
    assert len(result.trials) == 3 and set(result.trials["status"]) <= {"completed", "pruned"}
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in _study(exp).trials) and len(_study(exp).trials) == 3


# --- a local search: localhost only, no leaks ----------------------------------------------------------------------

LOCAL = """
import sys
from ctkd_tune.config import load_config
from ctkd_tune.search.driver import SearchSettings, run_search
base = load_config(preset="tiny", overrides=["train.steps=40", "train.eval_every=4", "train.eval_batches=1"])
run_search(base, SearchSettings(name="l", num_samples=4, results_root=sys.argv[1], grace_period=4, verbose=0))
"""


def _listening(pid: int) -> list[tuple[str, int, str]]:
    import psutil

    root = psutil.Process(pid)
    pids = {root.pid, *(p.pid for p in root.children(recursive=True))}
    return [(c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name()) for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]


def test_a_local_search_listens_on_localhost_only_and_leaves_nothing_behind(tmp_path):
    # a temporary folder of its own (short: Ray's socket paths must fit 107 characters), so that other searches
    # on this machine cannot blur what this one leaves behind
    private = Path(tempfile.mkdtemp(prefix="ct-", dir="/tmp"))
    driver = subprocess.Popen([sys.executable, "-c", LOCAL, str(tmp_path)],
                              env={**os.environ, "RAY_ADDRESS": "", "TMPDIR": str(private)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    exp = tmp_path / "l"
    _wait_for(lambda: any(t.intermediate_values for t in _study(exp).get_trials(deepcopy=False)), driver,
              "a running trial")
    sockets = _listening(driver.pid)
    out, _ = driver.communicate(timeout=DEADLINE_S)
    assert driver.returncode == 0, out[-2000:]
    assert len(sockets) >= 5, sockets  # GCS, raylet, object manager, dashboard agent, workers, ...
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip, _, _ in sockets), sockets
    trials = pd.read_parquet(exp / "trials.parquet")
    assert (trials["status"] == "pruned").any(), trials["status"].tolist()  # early stops leave no scratch either
    assert not list(private.glob("ctkd-trial-*")) and not list(exp.rglob("ctkd-scratch"))
    assert not list(private.glob("ray/session_2*")) and (exp / "logs").is_dir()  # the session is gone, logs kept
    shutil.rmtree(private, ignore_errors=True)
