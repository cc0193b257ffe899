"""TensorBoard event files for one run: the curves per step, τ and λ, and the hyperparameters (tensorboardX).

    board = Board("results/NAME/tensorboard/t07-cosine-tau1.0-5.0-lam0.5", hparams={"temperature.tau_min": 1.0})
    board.log({"step": 1, "train/loss": 5.2, "ctkd/temperature": 2.0, "ctkd/lambda": 0.0})   # every step
    board.close()

    tensorboard --logdir results/NAME        # every trial of a search, side by side (pip install -e ".[dashboards]")
    tensorboard --logdir runs/tiny           # one `distill --output runs/tiny`

Scalars use the metric keys of the tables (`train/loss`, `val/ppl`, `ctkd/temperature`, `ctkd/lambda`, ...) with
the training step as TensorBoard's step. The hyperparameters go to the HParams tab of the same run, with val/ppl,
val/kl and top-1 agreement as its metrics. A resumed run appends to the same folder; TensorBoard shows the
latest value of a step written twice.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

HPARAM_METRICS = ("val/ppl", "val/kl", "val/top1_agreement")


class Board:
    """One TensorBoard run; every numeric metric of a report becomes a scalar at its step."""

    def __init__(self, logdir: str | Path, hparams: dict[str, Any] | None = None):
        from tensorboardX import SummaryWriter
        from tensorboardX.summary import hparams as hparams_summary

        self.writer = SummaryWriter(logdir=str(logdir), flush_secs=10)
        self._end = None
        if hparams:
            values = {key: _hparam(value) for key, value in hparams.items()}
            experiment, start, self._end = hparams_summary(values, {key: 0.0 for key in HPARAM_METRICS})
            self.writer.file_writer.add_summary(experiment)
            self.writer.file_writer.add_summary(start)

    def log(self, metrics: dict[str, Any]) -> None:
        step = int(metrics["step"])
        for key, value in metrics.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self._end is not None:
            self.writer.file_writer.add_summary(self._end)
        self.writer.close()


def _hparam(value: Any) -> bool | str | float | int:
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
