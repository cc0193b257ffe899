"""Watching a search on a local Ray: per-trial gauges on the node's Prometheus endpoint, trial actors named after
their trial, and a tiny search whose names, live table and TensorBoard files are what the README shows.

Run: pytest tests/test_watch_ray.py   (one local Ray with its dashboard, 2 CPUs; a few minutes on a busy machine)
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from ctkd_tune.config import load_config  # noqa: E402
from ctkd_tune.search.reporter import GAUGES, TrialGauges, named_trainable, ray_trial_dirname, ray_trial_name  # noqa

QUICK = ["train.steps=12", "train.eval_every=4", "train.eval_batches=1", "train.batch_size=4"]
DEADLINE_S = 240  # generous: the machine may be busy; every wait below ends as soon as its event happens


@pytest.fixture(scope="module")
def cluster():
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    context = ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                       logging_level="ERROR",
                       log_to_driver=False)
    yield context
    ray.shutdown()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def _gauge_lines(text: str, trial: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("ray_ctkd_") and f'trial="{trial}"' in line]


def test_trial_gauges_on_the_metrics_endpoint_and_named_actors(cluster, tmp_path):
    """A running trial's gauges appear on the node's metrics endpoint with their tags; its actor is CTKDTrial and
    its repr is the trial's name. The trial waits for the test to have looked (an event file), so nothing is timed."""
    from ray.util.state import list_actors

    seen = tmp_path / "seen"

    def trial_fn(config, seen_file):
        gauges = TrialGauges("smoke", tune.get_context().get_trial_name())
        gauges.set({"val/ppl": 123.5, "ctkd/temperature": 2.25, "ctkd/lambda": 0.5, "step": 8,
                    "train/loss": 4.0, "train/tokens_per_s": 900.0, "ctkd/temperature_min": 2.0,
                    "ctkd/temperature_max": 2.5})
        deadline = time.monotonic() + DEADLINE_S
        while not Path(seen_file).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        tune.report({"done": 1})

    port = next(node["MetricsExportPort"] for node in ray.nodes() if node["Alive"])
    found: dict[str, object] = {}

    def watch():
        deadline = time.monotonic() + DEADLINE_S
        try:
            while time.monotonic() < deadline and "lines" not in found:
                lines = _gauge_lines(_scrape(port), "t03-cosine-tau1.0-5.0")
                if len(lines) >= len(GAUGES):
                    found["lines"] = lines
                    found["actors"] = [(a.class_name, a.state) for a in
                                       list_actors(address=f"http://{cluster.dashboard_url}", limit=1000)]
                time.sleep(1)
        finally:
            seen.touch()

    watcher = threading.Thread(target=watch)
    watcher.start()
    trainable = named_trainable(tune.with_parameters(trial_fn, seen_file=str(seen)))
    tuner = tune.Tuner(trainable, param_space={"optuna_trial": 3, "schedule.type": "cosine",
                                               "temperature.tau_min": 1.0, "temperature.tau_max": 5.0},
                       tune_config=tune.TuneConfig(trial_name_creator=ray_trial_name,
                                                   trial_dirname_creator=ray_trial_dirname),
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0))
    grid = tuner.fit()
    watcher.join()
    assert Path(grid[0].path).name == "t03-cosine-tau1.0-5.0"
    lines = found.get("lines")
    assert lines, "the gauges never appeared on the metrics endpoint"
    ppl = next(line for line in lines if line.startswith("ray_ctkd_val_ppl{"))
    assert 'experiment="smoke"' in ppl and ppl.endswith(" 123.5")
    assert {line.split("{")[0] for line in lines} >= {f"ray_{name}" for name, _ in GAUGES.values()}
    assert ("CTKDTrial", "ALIVE") in found["actors"]


def test_a_tiny_search_uses_the_names_everywhere(cluster, tmp_path, capsys):
    """Trial dirs, tables and TensorBoard runs carry the same names; the live table is printed without paths."""
    import pandas as pd
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from ctkd_tune.search.driver import SearchSettings, run_search

    base = load_config(preset="tiny", overrides=QUICK)
    result = run_search(base, SearchSettings(name="w", num_samples=2, results_root=tmp_path, grace_period=4,
                                             verbose=1))
    out = capsys.readouterr().out
    trials = pd.read_parquet(result.directory / "trials.parquet")
    names = sorted(trials["trial"])
    assert len(set(names)) == 2 and all(n.startswith(("t00-", "t01-")) for n in names)
    assert set(pd.read_parquet(result.directory / "curves.parquet")["trial"]) == set(names)
    ray_dirs = {p.name for p in (result.directory / "ray" / "w-run1").iterdir() if p.is_dir()}
    assert set(names) <= ray_dirs
    assert "w-run1: 2/2 done" in out and all(n in out for n in names) and str(tmp_path) not in out.split(
        "results:")[0]
    # the gauges are checked while a trial runs (test below): a finished trial's worker no longer exports them
    for name in names:
        acc = event_accumulator.EventAccumulator(str(result.directory / "tensorboard" / name))
        acc.Reload()
        assert {"train/loss", "ctkd/temperature", "ctkd/lambda", "val/ppl"} <= set(acc.Tags()["scalars"])
        assert [e.step for e in acc.Scalars("train/loss")][:3] == [1, 2, 3]  # every training step
