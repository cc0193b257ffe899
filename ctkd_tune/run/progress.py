"""What a run prints: one line per evaluation in a terminal, progress lines every N steps or seconds without one."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


def print_report(metrics: dict[str, Any], checkpoint: Path | None = None) -> None:
    """The CLI's reporter: one line per evaluation (the progress bar shows every step)."""
    if "val/ppl" in metrics:
        tqdm.write(f"step {metrics['step']:>6}  val/ppl {metrics['val/ppl']:9.2f}  val/kl {metrics['val/kl']:.4f}  "
                   f"T {metrics['ctkd/temperature']:.3f}  λ {metrics['ctkd/lambda']:.3f}")


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
