"""`ctkd-tune distill` end to end: a run directory around the `distill` loop.

    DIR/config.yaml        the resolved config (runnable with --config)
    DIR/metrics.parquet    one row per step; evaluation rows also carry val/* (same keys as reported)
    DIR/summary.json       final and best val/ppl, final temperature and λ, checks, status, wall time, config
    DIR/student/           the student (save_pretrained) and its tokenizer
    DIR/checkpoint/        the latest full training state, for --resume
    DIR/tensorboard/       TensorBoard events: every step's metrics, τ and λ, the config (tensorboard --logdir DIR)
All files are written atomically; an existing run is never overwritten unless resumed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ctkd_tune.run.checkpoint import load_checkpoint
from ctkd_tune.config import Config, ConfigError, dump_yaml
from ctkd_tune.run.loop import distill
from ctkd_tune.run.prepare import prepare
from ctkd_tune.run.progress import print_report
from ctkd_tune.io import atomic_write_json, atomic_write_parquet
from ctkd_tune.run.tboard import Board


def run_distill(cfg: Config, output: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    output = Path(output)
    checkpoint = output / "checkpoint"
    if resume and not (checkpoint / "state.pt").is_file():
        raise ConfigError(f"--resume: no checkpoint in {checkpoint}")
    if not resume and ((output / "summary.json").exists() or (checkpoint / "state.pt").exists()):
        raise ConfigError(f"{output} already holds a run: pick a new --output, or pass --resume")
    setup = prepare(cfg)  # fails on bad paths before anything is written
    output.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, output / "config.yaml", header=f"ctkd-tune distill --config {output / 'config.yaml'} "
                                                  "--output runs/NEW_NAME")

    # The curve on disk is rewritten at every checkpoint, so it never runs ahead of what --resume restores.
    rows = load_checkpoint(checkpoint, setup.device)["history"] if resume else []

    board = Board(output / "tensorboard", hparams=cfg.flat())

    def report(metrics: dict[str, Any], saved: Path | None) -> None:
        print_report(metrics, saved)
        board.log(metrics)
        rows.append(metrics)
        if saved is not None:
            atomic_write_parquet(output / "metrics.parquet", _rows(rows))
            size = sum(f.stat().st_size for f in Path(saved).iterdir() if f.is_file())
            print(f"checkpoint at step {metrics['step']}: {size / 2**20:.1f} MB in {saved}", file=sys.stderr)

    try:
        result = distill(cfg, report, setup=setup, checkpoint_dir=checkpoint, resume=checkpoint if resume else None,
                         progress=progress)
    finally:
        board.close()
    atomic_write_parquet(output / "metrics.parquet", _rows(result.history))
    atomic_write_json(output / "summary.json", result.summary)
    if result.history:
        result.student.save_pretrained(output / "student")
        setup.tokenizer.save_pretrained(output / "student")
    return result.summary


def _rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row gets every column (val/* are empty between evaluations)."""
    keys = list(dict.fromkeys(key for row in history for key in row))
    return [{key: row.get(key) for key in keys} for row in history]
