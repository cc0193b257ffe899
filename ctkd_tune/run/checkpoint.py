"""Save and restore the full training state of a distillation run (never the teacher).

A checkpoint is one file, `state.pt`, in a checkpoint directory: the student, the temperature module, the
alignment projection, both optimisers (`loop.Trained`), the step: how many updates are done (so also the 0-based
index of the next batch, as batches are a pure function of (data seed, step); a resumed run starts at step + 1),
the RNG state, the run's reference points and the metric history so far. It is written atomically and read
with `torch.load(weights_only=True)`, so a checkpoint cannot execute code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ctkd_tune.config import ConfigError
from ctkd_tune.io import atomic_torch_save

STATE_FILE = "state.pt"

# Fields that may change between an interrupted run and its resumption without changing its results.
RESUMABLE_CHANGES = {"train.device", "train.threads", "train.checkpoint_every", "train.eval_cache_mb",
                     "train.progress_every", "train.progress_seconds",
                     "train.teacher_cache_mb"}


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    directory = Path(directory)
    atomic_torch_save(directory / STATE_FILE, state)
    return directory


def load_checkpoint(path: str | Path, device: torch.device) -> dict[str, Any]:
    """Read a checkpoint directory (or its state.pt); a missing or corrupt file is a ConfigError."""
    path = Path(path)
    file = path / STATE_FILE if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"no checkpoint at {path} (expected {file})")
    try:
        state = torch.load(file, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise ConfigError(f"corrupt checkpoint {file}: {type(err).__name__}") from None
    missing = {"step", "student", "optimizer", "history", "config", "rng"} - set(state)
    if missing:
        raise ConfigError(f"corrupt checkpoint {file}: missing {', '.join(sorted(missing))}")
    return state


def check_same_run(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Resuming under a different configuration would silently mix two runs: refuse it."""
    for key, value in current.items():
        if key not in RESUMABLE_CHANGES and saved.get(key) != value:
            raise ConfigError(f"checkpoint was written with {key}={saved.get(key)!r}, this run has {value!r}")
