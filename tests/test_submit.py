"""`ctkd-tune search --submit` against a local `ray start --head` (127.0.0.1, its own temp dir, token auth on):
the job reaches SUCCEEDED with the search's tables; a stopped job leaves an experiment that `--resume` finishes.

Run: pytest tests/test_submit.py   (starts and stops its own head node; several minutes on a busy machine)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--preset", "tiny", "--set", "train.eval_batches=1", "--set", "train.batch_size=4"]
DEADLINE_S = 900  # generous: every wait ends as soon as its event happens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head node of our own: its temp dir is private, so no other `ray.init()` on the machine joins it."""
    if shutil.which("ray") is None:
        pytest.skip("no `ray` command")
    temp = Path(f"/tmp/ctkd-{os.getpid()}")  # short: Ray's unix sockets live under it
    port, dashboard = _free_port(), _free_port()
    # every port of our own: the defaults (dashboard agent 52365, metrics, ...) may be held by another Ray here
    ports = [f"--{flag}={_free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                       "metrics-export-port", "runtime-env-agent-port",
                                                       "ray-client-server-port", "node-manager-port",
                                                       "object-manager-port")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_CHDIR_TO_TRIAL_DIR": "0"}
    started = subprocess.run(["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                              "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "2",
                              "--temp-dir", str(temp), "--include-dashboard", "true", "--disable-usage-stats", *ports],
                             env=env, capture_output=True, text=True, timeout=DEADLINE_S)
    if started.returncode != 0:
        _stop_head(temp)
        pytest.fail(f"ray start failed: {started.stderr[-2000:]}")
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        _stop_head(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_head(temp: Path) -> None:
    """End this head node's processes (and their children: the job drivers), found by its private temp dir.
    Not `ray stop`: that ends every Ray process of the user on the machine, other people's clusters included."""
    import psutil

    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    ours = [p for p in psutil.process_iter(["cmdline"])
            if p.pid not in me and any(str(temp) in a for a in (p.info["cmdline"] or ()))]
    tree = {}
    for proc in ours:
        try:
            for p in (proc, *proc.children(recursive=True)):
                tree[p.pid] = p
        except psutil.NoSuchProcess:
            pass
    for proc in tree.values():
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(tree.values()), timeout=30)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def _submit(address: str, env: dict, args: list[str]) -> str:
    out = subprocess.run([sys.executable, "-m", "ctkd_tune.cli", "search", *args, "--submit", "--address", address],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE_S)
    assert out.returncode == 0, out.stderr
    assert "ray job logs --follow" in out.stdout and f"{address}/#/jobs/" in out.stdout
    return re.search(r"submitted job (\S+)", out.stdout).group(1)


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    from ctkd_tune.search.submit import auth_headers

    return JobSubmissionClient(address, headers=auth_headers())


def _wait(client, job_id: str, states: set[str]) -> str:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in states:
            return status
        time.sleep(2)
    raise AssertionError(f"job {job_id} still {status} after {DEADLINE_S} s:\n{client.get_job_logs(job_id)[-3000:]}")


def test_a_submitted_search_runs_and_a_stopped_one_resumes(head, tmp_path):
    import optuna
    import pandas as pd

    address, env = head
    client = _client(address)
    results = tmp_path / "results"
    job = _submit(address, env, [*QUICK, "--set", "train.steps=8", "--set", "train.eval_every=4",
                                 "--num-samples", "2", "--name", "done", "--results-dir", str(results)])
    assert client.get_job_info(job).metadata["experiment"] == "done"
    assert _wait(client, job, {"SUCCEEDED", "FAILED", "STOPPED"}) == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    assert len(pd.read_parquet(results / "done" / "trials.parquet")) == 2

    # a longer search, stopped once its first evaluation reached the study, then resumed
    job = _submit(address, env, [*QUICK, "--set", "train.steps=60", "--set", "train.eval_every=4",
                                 "--num-samples", "2", "--name", "stop", "--results-dir", str(results)])
    db = results / "stop" / "optuna.db"
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name="stop", storage=f"sqlite:///{db}")
            if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
                break
        except Exception:  # not created yet
            pass
        time.sleep(2)
    client.stop_job(job)
    assert _wait(client, job, {"SUCCEEDED", "FAILED", "STOPPED"}) == "STOPPED"
    assert json.loads((results / "stop" / "search.json").read_text())["runs"]
    job = _submit(address, env, ["--name", "stop", "--resume", "--results-dir", str(results)])
    assert _wait(client, job, {"SUCCEEDED", "FAILED", "STOPPED"}) == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    trials = pd.read_parquet(results / "stop" / "trials.parquet")
    assert len(trials) == 2 and set(trials["status"]) <= {"completed", "pruned"}
