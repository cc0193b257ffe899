"""A search on a real multi-node Ray cluster survives the loss of the node running a trial.

Run: pytest tests/test_search_node_loss.py   (a head and two worker nodes on this machine; about a minute idle)

`ray.cluster_utils.Cluster` starts a head node (no CPUs: it runs no trial) and worker node A; the search's single
trial can only run on A. Once the trial has reported (and checkpointed), worker node B joins and A is killed: Ray
Tune retries the trial (FailureConfig(max_failures=2)) on B from its last checkpoint, in shared local storage.
"""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
import sqlalchemy.exc

pytest.importorskip("ray")

DEADLINE_S = 900  # generous: the CI machine may be shared


def _study(directory):
    return optuna.load_study(study_name=directory.name, storage=f"sqlite:///{directory / 'optuna.db'}")


def test_a_lost_node_retries_the_trial_on_another_from_its_checkpoint(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        node_a = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        exp = tmp_path / "n"
        driver = subprocess.Popen(
            [sys.executable, "-m", "ctkd_tune.cli", "search", "--preset", "tiny", "--name", "n", "--num-samples", "1",
             "--address", cluster.address, "--results-dir", str(tmp_path), "--scheduler", "none",
             *(a for o in ("train.steps=1000", "train.eval_every=20", "train.eval_batches=1") for a in ("--set", o))],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline, reported = time.time() + DEADLINE_S, None
        while time.time() < deadline and driver.poll() is None:  # wait until the trial has checkpointed twice
            try:
                trials = _study(exp).get_trials(deepcopy=False) if (exp / "ray" / "n-run1").exists() else []
            except (KeyError, sqlalchemy.exc.OperationalError):
                trials = []
            if trials and len(trials[0].intermediate_values) >= 2 and not trials[0].state.is_finished():
                reported = max(trials[0].intermediate_values)
                break
            time.sleep(0.2)
        if reported is None:
            driver.kill()
            pytest.fail(f"the trial never reported twice before it ended: {driver.communicate()[0][-3000:]}")
        cluster.add_node(num_cpus=1)  # node B
        cluster.wait_for_nodes()
        cluster.remove_node(node_a, allow_graceful=False)  # the trial's node dies mid-trial
        out, _ = driver.communicate(timeout=DEADLINE_S)
        assert driver.returncode == 0, out[-3000:]
    finally:
        cluster.shutdown()
    study = _study(exp)
    ran = [t for t in study.trials if t.state.name != "WAITING"]  # fallback C stays queued: 1 sample only
    assert len(ran) == 1 and ran[0].state.name == "COMPLETE"  # recorded once
    trials, curves = pd.read_parquet(exp / "trials.parquet"), pd.read_parquet(exp / "curves.parquet")
    assert list(trials["status"]) == ["completed"] and trials["steps"].iloc[0] == 1000
    assert curves["step"].is_unique and curves["step"].max() == 1000  # no step twice
    # the trial failed once (the dead node) and its retry resumed from a checkpoint: Ray's own record of the
    # reports holds the first evaluation once (a restart from step 0 would have reported it again)
    trial_dir = next((exp / "ray" / "n-run1").glob("*/result.json")).parent
    assert (trial_dir / "error.txt").is_file()
    steps = [r["step"] for r in pd.read_json(trial_dir / "result.json", lines=True).to_dict("records")]
    assert steps.count(20) == 1 and reported in steps and steps[-1] == 1000
