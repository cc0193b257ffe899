"""The Ray Tune trainable of `ctkd-tune search`: one trial = one full `distill` run, no second training loop.

    tuner = tune.Tuner(tune.with_resources(tune.with_parameters(train_ctkd, base=cfg.to_dict()), {"cpu": 1}), ...)

Wiring only: the trial's config (base ← the searcher's suggestions), the worker set-up shared with `validate`
(`raycluster.worker_setup`), resume from `tune.get_checkpoint()` when Ray retries or restores the trial, and every
evaluation forwarded to `tune.report` with the checkpoint `distill` just wrote. Each report carries val/ppl (the
searcher's and scheduler's metric), the loop's metrics, `step` (ASHA's time axis), `status`, `stop_reason`,
`ctkd/evals_at_bound` (`checks.RunawayCounter`), `reported_at` (the worker's unix time: the search's timeline) and
the searched params. A diverged run ends with one last finite report (status "diverged", the reason, val/ppl =
vocabulary size, the perplexity of a uniform guess): NaN never reaches Ray or Optuna. A config error raises (the
trial ends in ERROR). Scratch space (checkpoints) lives in the trial's own folder and is removed when it ends.
"""

from __future__ import annotations

import gc
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from ctkd_tune.run.checkpoint import load_checkpoint
from ctkd_tune.run.checks import RunawayCounter
from ctkd_tune.run.loop import distill
from ctkd_tune.run.prepare import prepare
from ctkd_tune.run.summary import RunStatus
from ctkd_tune.search.cluster import worker_setup
from ctkd_tune.search.compat import RAY_STORAGE_LOGGER
from ctkd_tune.search.results import CURVE_METRICS, OPTUNA_TRIAL_KEY
from ctkd_tune.search.spaces import trial_config
from ctkd_tune.values import finite

SCRATCH = "ctkd-scratch"
"""The trial's checkpoints, inside its own folder (Ray's trial working directory)."""


def train_ctkd(params: dict[str, Any], base: dict[str, Any], watch: dict[str, str] | None = None,
               stored: str | None = None) -> None:
    """Ray Tune function trainable: distill with `base` ← `params`, reporting at every evaluation. `stored`: the
    teacher states the driver built (the trial then loads the teacher's head only, see `distill.prepare`).

    `watch` ({"experiment": NAME, "tensorboard": DIR}): every step also sets the trial's Ray metrics gauges and
    writes TensorBoard scalars to DIR/<trial name>/ (see ctkd_tune.search.reporter, ctkd_tune.run.tboard)."""
    logging.getLogger(RAY_STORAGE_LOGGER).setLevel(logging.WARNING)  # one "Checkpoint created" per eval
    params = {k: v for k, v in params.items() if k != OPTUNA_TRIAL_KEY}
    cfg = worker_setup(trial_config(base, params))  # ConfigError → the trial errors, with the message
    work = Path(tune.get_context().get_trial_dir()) / SCRATCH
    shutil.rmtree(work, ignore_errors=True)  # what an attempt killed without its `finally` left
    setup = run = board = gauges = None
    started, before = time.perf_counter(), 0.0  # wall time of this attempt, and of earlier ones (from the checkpoint)
    try:
        resume = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:  # a retry after a worker failure, or a restored search
            resume = checkpoint.to_directory(str(work / "resume"))
        setup = prepare(cfg, stored=stored)
        runaway = RunawayCounter(cfg)
        if resume is not None:  # count the evaluations before the restart too
            state = load_checkpoint(resume, torch.device("cpu"))
            before = state["wall_time"]
            for row in state["history"]:
                if "val/ppl" in row:
                    runaway.update(row)
            del state

        if watch:
            board, gauges = _watchers(watch, params)

        def row(metrics: dict[str, Any], status: str, reason: str) -> dict[str, Any]:
            return {**metrics, "ctkd/evals_at_bound": runaway.count, "status": status, "stop_reason": reason,
                    "wall_time_s": before + time.perf_counter() - started, "reported_at": time.time(), **params}

        def report(metrics: dict[str, Any], saved: Path | None) -> None:
            if gauges is not None:
                gauges.set(metrics)
                board.log(metrics)
            if "val/ppl" not in metrics:
                return
            runaway.update(metrics)
            kept = {key: metrics[key] for key in CURVE_METRICS if key in metrics}
            done = metrics["step"] == cfg.train.steps
            tune.report(row({**kept, "step": metrics["step"]}, "completed" if done else "running", ""),
                        checkpoint=tune.Checkpoint.from_directory(str(saved)) if saved else None)

        run = distill(cfg, report, setup=setup, checkpoint_dir=work / "checkpoint", resume=resume, progress=False)
        if run.summary["status"] != RunStatus.COMPLETED:  # diverged: one last finite row that says why
            last = run.history[-1] if run.history else {}
            kept = {k: last[k] for k in ("ctkd/temperature", "ctkd/lambda") if finite(last.get(k))}
            tune.report(row({"val/ppl": float(setup.student.config.vocab_size), **kept,
                             "step": min(run.summary["steps"] + 1, cfg.train.steps)}, "diverged",
                            run.summary["stop_reason"]))
    finally:
        if board is not None:
            board.close()
        del setup, run
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        shutil.rmtree(work, ignore_errors=True)


def _watchers(watch: dict[str, str], params: dict[str, Any]):
    """This trial's TensorBoard run (DIR/<trial name>) and Ray metrics gauges."""
    from ctkd_tune.search.names import path_name
    from ctkd_tune.run.tboard import Board
    from ctkd_tune.search.reporter import TrialGauges

    name = tune.get_context().get_trial_name()
    board = Board(Path(watch["tensorboard"]) / path_name(name), hparams=params)
    return board, TrialGauges(watch["experiment"], name)
