"""What a run prints: its start (models, step-0 val/ppl), a bar on a terminal or progress lines without one, and one
line per evaluation (`print_report`, the CLI's reporter)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ctkd_tune.config import Config


def print_report(metrics: dict[str, Any], checkpoint: Path | None = None) -> None:
    """The CLI's reporter: one line per evaluation (the progress bar shows every step)."""
    if "val/ppl" in metrics:
        tqdm.write(f"step {metrics['step']:>6}  val/ppl {metrics['val/ppl']:9.2f}  val/kl {metrics['val/kl']:.4f}  "
                   f"T {metrics['ctkd/temperature']:.3f}  λ {metrics['ctkd/lambda']:.3f}")


def print_start(cfg: Config, teacher_parameters: int, student_parameters: int, references: dict[str, float]) -> None:
    """Before step 1 of a fresh run: both models' sizes, and the reference points (step-0 val/ppl, the teacher's)."""
    derived = ", initialised from its layers" if cfg.model.student_init_from_teacher else ""
    tqdm.write(f"teacher {teacher_parameters / 1e6:.1f} M parameters, student {student_parameters / 1e6:.1f} M "
               f"({'loaded' if cfg.model.student else 'derived from the teacher' + derived})")
    tqdm.write(f"step      0  val/ppl {references['ref/student_val_ppl_start']:9.2f}  "
               f"(the teacher's: {references['ref/teacher_val_ppl']:.2f})")


class ProgressLines:
    """Progress without a terminal (logs, CI, Ray workers): one line every `every` steps or `seconds` seconds."""

    def __init__(self, every: int, seconds: float, total: int):
        self.every, self.seconds, self.total = every, seconds, total
        self.last = time.perf_counter()

    def maybe_print(self, row: dict[str, Any]) -> None:
        now = time.perf_counter()
        if row["step"] % self.every and now - self.last < self.seconds and row["step"] != self.total:
            return
        self.last = now
        print(f"step {row['step']}/{self.total}  loss {row['train/loss']:.4f}  kd {row['train/kd_loss']:.4f}  "
              f"ce {row['train/ce_loss']:.4f}  T {row['ctkd/temperature']:.3f}  λ {row['ctkd/lambda']:.3f}  "
              f"lr {row['train/lr']:.2e}  {row['train/tokens_per_s']:.0f} tok/s", file=sys.stderr, flush=True)


class Progress:
    """The steps from `start` to train.steps, shown as a tqdm bar on a terminal, else as `ProgressLines`; nothing
    with enabled=False. Iterate over it for the steps; `show` each step's row once it is logged."""

    def __init__(self, cfg: Config, start: int, enabled: bool):
        t = cfg.train
        self.bar = tqdm(range(start, t.steps + 1), initial=start - 1, total=t.steps, dynamic_ncols=True, leave=False,
                        disable=not (enabled and sys.stderr.isatty()))
        self.lines = ProgressLines(t.progress_every, t.progress_seconds, t.steps) if enabled and self.bar.disable \
            else None
        self.val_ppl = float("nan")  # the last evaluation's, shown on the bar

    def __iter__(self):
        return iter(self.bar)

    def show(self, row: dict[str, Any]) -> None:
        self.val_ppl = row.get("val/ppl", self.val_ppl)
        self.bar.set_postfix(loss=f"{row['train/loss']:.3f}", τ=f"{row['ctkd/temperature']:.2f}",
                             λ=f"{row['ctkd/lambda']:.2f}", ppl=f"{self.val_ppl:.1f}",
                             tok_s=f"{row['train/tokens_per_s']:.0f}")
        if self.lines is not None:
            self.lines.maybe_print(row)

    def close(self) -> None:
        self.bar.close()

