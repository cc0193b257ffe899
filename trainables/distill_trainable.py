"""The Ray Tune trainable of `ctkd-tune search`: one trial = one full `distill` run, no second training loop.

    tuner = tune.Tuner(tune.with_resources(tune.with_parameters(train_ctkd, base=cfg.to_dict()), {"cpu": 1}), ...)

Per trial: the base config (nested dict) with the searcher's dotted-key suggestions applied; resume from
`tune.get_checkpoint()` when Ray retries or restores the trial; forward every evaluation to `tune.report` with the
checkpoint `distill` just wrote; torch threads = the trial's CPUs; CUDA only when Ray assigned a GPU. Every report
carries val/ppl (the searcher's and scheduler's metric), the loop's metrics, `step` (ASHA's time axis), `status`,
`stop_reason`, `reported_at` (the worker's unix time: the search's timeline) and the searched params. A diverged
run ends with one last finite report (status "diverged", the reason, val/ppl = vocabulary size, the perplexity of
a uniform guess): NaN never reaches Ray or Optuna. A config error raises (the trial ends in ERROR).
"""

from __future__ import annotations

import gc
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from ctkd_tune.checkpoint import load_checkpoint
from ctkd_tune.distill import distill, prepare
from ctkd_tune.results import OPTUNA_TRIAL_KEY
from search_spaces import trial_config

REPORTED = ("val/ppl", "val/kl", "val/top1_agreement", "val/loss", "train/loss", "train/kd_loss", "train/ce_loss",
            "train/lr", "ctkd/temperature", "ctkd/temperature_min", "ctkd/temperature_max", "ctkd/lambda")


def train_ctkd(params: dict[str, Any], base: dict[str, Any], watch: dict[str, str] | None = None) -> None:
    """Ray Tune function trainable: distill with `base` ← `params`, reporting at every evaluation.

    `watch` ({"experiment": NAME, "tensorboard": DIR}): every step also sets the trial's Ray metrics gauges and
    writes TensorBoard scalars to DIR/<trial name>/ (see ctkd_tune.tune_watch, ctkd_tune.tboard)."""
    import ray
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # one "Checkpoint created" per eval
    params = {k: v for k, v in params.items() if k != OPTUNA_TRIAL_KEY}
    cfg = trial_config(base, params)  # ConfigError → the trial errors, with the message
    if cfg.train.device == "auto" and not ray.get_gpu_ids():
        cfg.train.device = "cpu"  # a CPU trial never takes a GPU another trial was given (resumable change)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(cfg.train.threads or max(1, int(cpus)))

    work = Path(tempfile.mkdtemp(prefix="ctkd-trial-"))
    setup = run = board = gauges = None
    started, before = time.perf_counter(), 0.0  # wall time of this attempt, and of earlier ones (from the checkpoint)
    try:
        resume = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:  # a retry after a worker failure, or a restored search
            resume = checkpoint.to_directory(str(work / "resume"))
        setup = prepare(cfg)
        runaway = _RunawayCounter(cfg)
        if resume is not None:  # count the evaluations before the restart too
            state = load_checkpoint(resume, torch.device("cpu"))
            before = state["wall_time"]
            for row in state["history"]:
                if "val/ppl" in row:
                    runaway.update(row)
            del state

        if watch:
            board, gauges = _watchers(watch, params)

        def report(metrics: dict[str, Any], saved: Path | None) -> None:
            if gauges is not None:
                gauges.set(metrics)
                board.log(metrics)
            if "val/ppl" not in metrics:
                return
            row = {key: metrics[key] for key in REPORTED if key in metrics}
            done = metrics["step"] == cfg.train.steps
            row.update({"step": metrics["step"], "ctkd/evals_at_bound": runaway.update(metrics),
                        "status": "completed" if done else "running", "stop_reason": "",
                        "wall_time_s": before + time.perf_counter() - started, "reported_at": time.time(), **params})
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(str(saved)) if saved else None)

        run = distill(cfg, report, setup=setup, checkpoint_dir=work / "checkpoint", resume=resume, progress=False)
        summary = run.summary
        if summary["status"] != "completed":  # diverged: one last finite row that says why
            last = run.history[-1] if run.history else {}
            tune.report({"val/ppl": float(setup.student.config.vocab_size),
                         **{k: last[k] for k in ("ctkd/temperature", "ctkd/lambda") if _finite(last.get(k))},
                         "step": min(summary["steps"] + 1, cfg.train.steps), "ctkd/evals_at_bound": runaway.count,
                         "status": "diverged", "stop_reason": summary["status"],
                         "wall_time_s": before + time.perf_counter() - started, "reported_at": time.time(), **params})
    finally:
        if board is not None:
            board.close()
        del setup, run
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        shutil.rmtree(work, ignore_errors=True)


def _watchers(watch: dict[str, str], params: dict[str, Any]):
    """This trial's TensorBoard run (DIR/<trial name in ASCII>) and Ray metrics gauges."""
    from ctkd_tune.names import path_name
    from ctkd_tune.tboard import Board
    from ctkd_tune.tune_watch import TrialGauges

    name = tune.get_context().get_trial_name()
    board = Board(Path(watch["tensorboard"]) / path_name(name), hparams=params)
    return board, TrialGauges(watch["experiment"], name)


class _RunawayCounter:
    """Consecutive evaluations, once λ > 0, at which the (mean) temperature sits within tolerance of a bound."""

    def __init__(self, cfg):
        t = cfg.temperature
        self.mode = t.mode
        self.lo, self.hi = t.tau_min, t.tau_max
        self.margin = cfg.checks.runaway_tolerance * (t.tau_max - t.tau_min)
        self.count = 0

    def update(self, metrics: dict[str, Any]) -> int:
        tau = metrics.get("ctkd/temperature")
        # the temperature moves under plain minimisation always, under CTKD only once λ > 0
        moving = self.mode == "learnable" or (self.mode == "ctkd" and metrics.get("ctkd/lambda", 0.0) > 0)
        if moving and tau is not None and (tau >= self.hi - self.margin or tau <= self.lo + self.margin):
            self.count += 1
        else:
            self.count = 0
        return self.count


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
