"""Watching a search: trial names, the compact table from recorded results, `status` from an experiment's files,
TensorBoard files read back by TensorBoard's own reader, and a CLI that answers --help without heavy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ctkd_tune.search.names import path_name, trial_name
from ctkd_tune.search.status import WIDTH, TrialRow, best_row, render, should_print, signature, status_from_files

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"temperature.tau_min": 1.0, "temperature.tau_max": 5.0, "temperature.tau_init": 2.0,
          "schedule.lambda_max": 0.5, "schedule.warmup_ratio": 0.4, "schedule.type": "cosine",
          "temperature.granularity": "global"}


# --- names --------------------------------------------------------------------------------------------------------

def test_trial_name_reads_the_knobs_and_is_safe_everywhere():
    name = trial_name(7, PARAMS)
    assert name == "t07-cosine-tau1.0-5.0-lam0.5"
    token = trial_name(12, {**PARAMS, "schedule.type": "exp", "temperature.granularity": "token",
                            "temperature.tau_min": 0.734, "schedule.lambda_max": 0.0512})
    assert token == "t12-exp-tau0.73-5.0-lam0.051-tok"
    assert trial_name(4, {**PARAMS, "loss.divergence": "reverse_kl"}) == "t04-rkl-cosine-tau1.0-5.0-lam0.5"
    for n in (name, token, trial_name(3, {"weird key/..": "x y"})):
        assert n == path_name(n) and n.isascii() and "/" not in n and len(n) <= 100


def test_trial_names_are_unique_and_stable():
    from ctkd_tune.search.spaces import load_space
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    names = []
    for _ in range(40):
        trial = study.ask()
        load_space(None)(trial)
        names.append(trial_name(trial.number, trial.params))
        study.tell(trial, 1.0)
    assert len(set(names)) == len(names)  # the number makes them unique, even for equal knobs
    again = [trial_name(t.number, t.params) for t in study.get_trials()]  # e.g. read back on --resume
    assert again == names
    assert trial_name(1, PARAMS) != trial_name(2, PARAMS)


# --- the compact table ----------------------------------------------------------------------------------------------

ROWS = [TrialRow("t00-cosine-tau1.0-5.0-lam1.0", "completed", 150, 150, 180.25, 2.01, 1.0),
        TrialRow("t01-cosine-tau1.0-5.0-lam0.5", "pruned", 75, 150, 260.0, 2.0, 0.5),
        TrialRow("t02-exp-tau0.73-7.9-lam0.051-tok", "diverged", 50, 150, None, 7.9, 0.05),
        TrialRow("t03-linear-tau1.5-3.0-lam0.2", "running", 100, 150, 170.5, 1.8, 0.2),
        TrialRow("t04-constant-tau0.51-6.6-lam1.9-tok-and-a-very-long-tail", "running", 25, 150, None, 2.5, 0.0)]


def test_table_content_from_recorded_results():
    text = render(ROWS, elapsed_s=190.0, step_rate=2.0, num_samples=8, max_t=150, title="smoke")
    lines = text.splitlines()
    assert lines[0] == "smoke: 3/8 done (1 completed, 1 pruned, 1 failed), 2 running, 3 to start"
    # best: the completed trial, although the running one is lower so far
    assert "best val/ppl 180.25 (t00-cosine-tau1.0-5.0-lam1.0)" in lines[1]
    # ETA: running trials to their end (50 + 125 steps) and 3 trials to start (450) at 2 steps/s = 312.5 s
    assert "elapsed 3m10s" in lines[1] and "ETA ≤ 5m12s" in lines[1]
    body = lines[3:]
    assert [line.split()[0] for line in body][:4] == [r.name for r in ROWS[:4]]  # ordered by trial number
    assert body[1].split()[1:4] == ["pruned", "75/150", "260.00"]
    assert body[2].split()[1:4] == ["diverged", "50/150", "–"]  # no val/ppl for a diverged trial
    assert body[3].split()[1:6] == ["running", "100/150", "170.50", "1.80", "0.20"]
    assert all(len(line) <= WIDTH for line in lines)
    assert "/tmp" not in text and "TERMINATED" not in text


def test_table_before_any_completes_and_when_finished():
    partial = render(ROWS[3:4], elapsed_s=None, step_rate=None, num_samples=None, max_t=150)
    assert "best val/ppl 170.50 (t03-linear-tau1.5-3.0-lam0.2, partial)" in partial and "ETA" not in partial
    done = render(ROWS[:2], elapsed_s=60, step_rate=3.0, num_samples=2, max_t=150)
    assert "finished" in done.splitlines()[1] and "ETA" not in done
    assert best_row([ROWS[2]]) is None


def test_printed_on_changes_at_most_every_period_otherwise():
    sig = signature(ROWS)
    assert should_print(None, ROWS, None)  # the first table
    assert not should_print(sig, ROWS, 5.0)  # new results, 5 s after the last table
    assert should_print(sig, ROWS, 31.0)  # new results, past the period
    assert not should_print(sig, ROWS, 31.0, changed=False)  # nothing new: nothing printed
    moved = [*ROWS[:3], TrialRow(ROWS[3].name, "completed", 150, 150, 160.0), ROWS[4]]
    assert should_print(sig, moved, 1.0)  # a trial ended: printed at once


def test_rows_from_ray_trials_show_pruned_not_terminated():
    from ctkd_tune.search.reporter import rows_from_trials

    def trial(number, ray_status, **result):
        return SimpleNamespace(status=ray_status, config={"optuna_trial": number, **PARAMS}, last_result=result)

    rows = rows_from_trials([trial(0, "TERMINATED", step=150, status="completed", **{"val/ppl": 180.0}),
                             trial(1, "TERMINATED", step=75, status="running", **{"val/ppl": 260.0}),
                             trial(2, "TERMINATED", step=50, status="diverged", **{"val/ppl": 64.0}),
                             trial(3, "RUNNING", step=25, status="running", **{"val/ppl": 300.0,
                                                                               "ctkd/temperature": 2.2}),
                             trial(4, "PENDING"), trial(5, "ERROR", step=25)],
                            max_t=150, ppl_threshold=1e4, runaway_patience=3)
    assert [r.state for r in rows] == ["completed", "pruned", "diverged", "running", "pending", "error"]
    assert rows[1].name == "t01-cosine-tau1.0-5.0-lam0.5" and rows[2].val_ppl is None and rows[3].tau == 2.2


# --- status from an experiment's files -------------------------------------------------------------------------------

def _experiment(tmp_path: Path, *, finished: bool) -> Path:
    """results/NAME as a search leaves it: search.json, the Optuna study and curves.parquet (no Ray involved)."""
    import optuna
    import pandas as pd

    directory = tmp_path / "smoke"
    directory.mkdir()
    (directory / "search.json").write_text(json.dumps({
        "name": "smoke", "base": {}, "space": None, "settings": {"max_t": 60, "params": sorted(PARAMS)},
        "runs": [{"name": "smoke-run1", "num_samples": 3}]}))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="smoke", storage=f"sqlite:///{directory / 'optuna.db'}")
    curves = []
    for number, (state, steps, ppl) in enumerate([("completed", 60, 150.0), ("pruned", 30, 400.0),
                                                  ("running", 45, 220.0)]):
        params = {**PARAMS, "schedule.lambda_max": 1.0 - 0.25 * number}
        study.enqueue_trial(params)
        trial = study.ask({key: optuna.distributions.FloatDistribution(0.0, 10.0) if isinstance(value, float)
                           else optuna.distributions.CategoricalDistribution([value])
                           for key, value in params.items()})
        assert trial.params == params
        for step in range(15, steps + 1, 15):
            trial.report(ppl + (steps - step), step)
            curves.append({"trial_id": f"id{number}", "optuna_trial": number, "step": step, "status": "running",
                           "val/ppl": ppl + (steps - step), "ctkd/temperature": 2.0 + step / 100,
                           "ctkd/lambda": 0.5})
        if state == "completed":
            trial.set_user_attr("status", "completed")
            study.tell(trial, ppl)
        elif state == "pruned":
            trial.set_user_attr("status", "pruned")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    pd.DataFrame(curves).to_parquet(directory / "curves.parquet")
    # the driver's lock: a finished (or killed) search left it with a pid that no longer runs
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    import socket

    pid = gone.pid if finished else os.getpid()  # this test process stands in for a running driver
    (directory / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "command": "search"}))
    return directory


def test_status_of_a_running_search(tmp_path):
    text = status_from_files(_experiment(tmp_path, finished=False))
    lines = text.splitlines()
    assert lines[0] == "smoke (running): 2/3 done (1 completed, 1 pruned, 0 failed), 1 running"
    assert "best val/ppl 150.00 (t00-cosine-tau1.0-5.0-lam1.0)" in lines[1] and "ETA ≤" in lines[1]
    assert lines[-1].split()[:6] == ["t02-cosine-tau1.0-5.0-lam0.5", "running", "45/60", "220.00", "2.45", "0.50"]
    assert lines[-2].split()[:3] == ["t01-cosine-tau1.0-5.0-lam0.75", "pruned", "30/60"]


def test_status_of_an_interrupted_search_through_the_cli(tmp_path, capsys):
    from ctkd_tune.cli import main

    directory = _experiment(tmp_path, finished=True)
    assert main(["status", "--experiment", str(directory)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "smoke (not running): 2/3 done (1 completed, 1 pruned, 0 failed), 0 running, 1 interrupted"
    assert lines[-1].split()[:3] == ["t02-cosine-tau1.0-5.0-lam0.5", "interrupted", "45/60"]
    assert main(["status", "--experiment", str(tmp_path / "nothing")]) == 2


# --- TensorBoard --------------------------------------------------------------------------------------------------

def test_tensorboard_files_read_back_by_tensorboard(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from ctkd_tune.run.tboard import Board

    board = Board(tmp_path / "t00", hparams={"temperature.tau_min": 1.0, "schedule.type": "cosine"})
    for step in range(1, 6):
        row = {"step": step, "train/loss": 5.0 - step * 0.1, "ctkd/temperature": 2.0 + step / 10,
               "ctkd/lambda": step / 5, "train/tokens_per_s": float("nan")}
        if step % 5 == 0:
            row["val/ppl"] = 123.0
        board.log(row)
    board.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path / "t00"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"train/loss", "ctkd/temperature", "ctkd/lambda", "val/ppl"} <= set(scalars)
    assert "train/tokens_per_s" not in scalars  # NaN is not written
    assert [e.step for e in acc.Scalars("ctkd/lambda")] == [1, 2, 3, 4, 5]
    assert acc.Scalars("ctkd/temperature")[-1].value == pytest.approx(2.5)
    assert [e.value for e in acc.Scalars("val/ppl")] == [123.0]
    plugins = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(plugins)
    assert b"temperature.tau_min" in plugins["_hparams_/session_start_info"]


# --- the command line -----------------------------------------------------------------------------------------------

def test_help_and_version_import_nothing_heavy():
    probe = ("import sys, contextlib, io\n"
             "from ctkd_tune.cli import build_parser, main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    for argv in (['--help'], ['--version'], ['search', '--help']):\n"
             "        try: main(argv)\n"
             "        except SystemExit: pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'ray', 'optuna', 'pandas') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stderr
    version = subprocess.run([sys.executable, "-m", "ctkd_tune.cli", "--version"], capture_output=True, text=True,
                             env=env, cwd=ROOT, check=True)
    assert version.stdout.strip() == "ctkd-tune 0.1.0"
    assert "--dry-run" in subprocess.run([sys.executable, "-m", "ctkd_tune.cli", "search", "--help"],
                                         capture_output=True, text=True, env=env, cwd=ROOT).stdout


def test_grafana_dashboard_plots_every_gauge_per_trial():
    from ctkd_tune.search.grafana import DASHBOARD
    from ctkd_tune.search.reporter import GAUGES

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert sorted(e.split("(ray_")[1].split("{")[0] for e in exprs) == sorted(name for name, _ in GAUGES.values())
    assert all("by (trial)" in e and 'experiment=~"$experiment"' in e for e in exprs)
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "experiment", "trial"}


def test_submit_entrypoint_is_the_same_search_on_the_cluster(tmp_path, monkeypatch):
    from ctkd_tune.search.submit import auth_headers, entrypoint

    argv = ["search", "--preset", "tiny", "--name", "smoke", "--submit", "--address", "http://127.0.0.1:8265",
            "--results-dir", "res", "--set", "train.steps=12"]
    monkeypatch.chdir(tmp_path)
    assert entrypoint(argv, "res") == ("python -m ctkd_tune.cli search --preset tiny --name smoke --set "
                                       f"train.steps=12 --address auto --results-dir {tmp_path / 'res'}")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc")
    assert auth_headers() == {"Authorization": "Bearer abc"}
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert auth_headers() == {}


def test_dry_run_plan_shows_config_space_budget_and_estimate():
    from ctkd_tune.config import load_config
    from ctkd_tune.search.dryrun import Estimate, plan_text

    cfg = load_config(preset="tiny", overrides=["train.steps=60", "train.eval_every=20"])
    text = plan_text(cfg, None, num_samples=4, concurrent=2, estimate=Estimate(step_s=2.0, eval_s=1.0))
    assert "steps: 60" in text and "temperature.tau_max" in text  # the resolved config and the space
    assert "budget: 4 trials × 60 steps, 4 evaluations each, 2 at once" in text  # evals at 6, 20, 40, 60
    # per trial 60 × 2 s + 4 × 1 s = 124 s; two waves of two trials: 248 s
    assert "→ 2m04s per trial, ≤ 4m08s for the search" in text
    assert "estimate: none (no teacher)" in plan_text(cfg, None, 4, 2, None, "no teacher")
    assert all(len(line) <= 100 for line in text.splitlines() if not line.startswith(("#", " ")))
