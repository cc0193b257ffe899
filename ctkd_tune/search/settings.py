"""How a search runs: `SearchSettings` (the CLI's flags as one dataclass) and the default search's budget.

Importable without Ray (`ctkd-tune search --dry-run` and the CLI read it before Ray is imported).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ctkd_tune.config import ConfigError

# The default search (no --config/--preset): the Shakespeare preset at 150 steps, 8 trials, 2 at a time on 2 CPU
# cores. One such trial takes ~110 s on one core (7 evaluations); ASHA stops about half of the trials at
# step 75, so the search takes ~6 min on an idle 2-core machine once the teacher is cached (README). `--set` overrides.
DEFAULT_NUM_SAMPLES = 8
DEFAULT_BUDGET = {"train.steps": 150, "train.eval_every": 25}  # eval every 25: ASHA's rung (68) acts at step 75
STARTUP_TRIALS = 4  # TPE samples at random until this many trials finished (the known points count)
METRIC, MODE = "val/ppl", "min"
SAMPLERS = ("tpe", "random")
SCHEDULERS = ("asha", "none")  # none: no early stopping (divergence still stops a trial)
TABLE_PERIOD_S = 60.0  # the tables are rewritten at least this often while trials run


@dataclass
class SearchSettings:
    """How a search runs; the fields that shape the study are recorded in search.json for `--resume`."""
    name: str = "ctkd-search"
    """The experiment: results/NAME/ and its Optuna study."""
    space: str | None = None
    """module:function, file.py:function or file.yaml (None: the experiment's space, else the default space)."""
    num_samples: int | None = None
    """Trials to run (default DEFAULT_NUM_SAMPLES); again with the same name: more trials in the same study."""
    max_concurrent: int | None = None
    """Trials at once (default: what the resources allow)."""
    cpus_per_trial: float = 1.0
    """CPUs per trial (fractions allowed)."""
    gpus_per_trial: float = 0.0
    """GPUs per trial (fractions allowed)."""
    address: str | None = None
    """An existing Ray cluster (auto, ray://HOST:PORT); None: RAY_ADDRESS, else a new local Ray."""
    storage_path: str | None = None
    """Ray's trial storage shared by all nodes (path or URI; default results/NAME/ray)."""
    results_root: str | Path = "results"
    """Where results/NAME/ goes."""
    seed: int = 0
    """Seed of the sampler (a run that adds trials uses seed + run index - 1)."""
    dashboard_host: str = "127.0.0.1"
    """The local Ray dashboard's bind address; anything but localhost exposes it (with token auth)."""
    sampler: str = "tpe"
    """tpe (seeded, random for its first STARTUP_TRIALS) or random."""
    scheduler: str = "asha"
    """asha (early stopping) or none (every trial runs to train.steps unless it diverges)."""
    grace_period: int | None = None
    """ASHA's first rung in steps (default: past the space's longest λ warmup, see `_grace_period`)."""
    reduction_factor: float = 2
    """ASHA's reduction factor."""
    ppl_threshold: float | None = None
    """val/ppl above which a trial has diverged (default: checks.ppl_at_10 of the base config)."""
    runaway_patience: int = 3
    """Evaluations with the temperature at a bound before a trial counts as a runaway (0 = off)."""
    points: list[dict] | None = field(default=None)
    """Known points evaluated first while the study is empty (default: ctkd_tune.search.arms.KNOWN_POINTS)."""
    verbose: int = 1
    """Ray Tune's verbosity (0 silent, 1 the progress table)."""

    def check(self) -> None:
        """ConfigError naming the flag for an impossible value."""
        s = self
        if not s.name or "/" in s.name or s.name.startswith("."):
            raise ConfigError(f"--name must be a plain folder name, got {s.name!r}")
        if s.max_concurrent is not None and s.max_concurrent < 1:
            raise ConfigError(f"--max-concurrent must be >= 1, got {s.max_concurrent}")
        if s.num_samples is not None and s.num_samples < 1:
            raise ConfigError(f"--num-samples must be >= 1, got {s.num_samples}")
        if s.sampler not in SAMPLERS:
            raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {s.sampler!r}")
        if s.scheduler not in SCHEDULERS:
            raise ConfigError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {s.scheduler!r}")
        if not (math.isfinite(s.cpus_per_trial) and s.cpus_per_trial > 0):
            raise ConfigError(f"--cpus-per-trial must be a finite number > 0, got {s.cpus_per_trial}")
        if not (math.isfinite(s.gpus_per_trial) and s.gpus_per_trial >= 0):
            raise ConfigError(f"--gpus-per-trial must be a finite number >= 0, got {s.gpus_per_trial}")
        if s.ppl_threshold is not None and not (math.isfinite(s.ppl_threshold) and s.ppl_threshold > 0):
            raise ConfigError(f"ppl_threshold must be a finite number > 0, got {s.ppl_threshold}")
