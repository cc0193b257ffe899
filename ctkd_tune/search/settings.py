"""How a search runs: `SearchSettings` (the CLI's flags as one dataclass), `StudySettings` (what search.json
records of them, resolved, for `--resume` and the tables) and the default search's budget.

    settings = SearchSettings(name="smoke", num_samples=4); settings.check()      # ConfigError naming the flag
    fixed = StudySettings.from_dict(json.loads(text)["settings"], "results/smoke/search.json")
    atomic_write_json(path, {..., "settings": fixed.to_dict()})

Importable without Ray or Optuna (`ctkd-tune search --dry-run` and the CLI read it before Ray is imported).
"""

from __future__ import annotations

import functools
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ctkd_tune.config import ConfigError

# The default search (no --config/--preset): the Shakespeare preset at 150 steps, 8 trials, 2 at a time on 2 CPU
# cores; ASHA stops about half of the trials at step 75. Measured at 4d83553 with nothing else running: 6 min 14 s
# once the teacher is cached (docs/results/2026-12-02-default-search-speed.md); more under load. `--set` overrides.
DEFAULT_NUM_SAMPLES = 8
DEFAULT_BUDGET = {"train.steps": 150, "train.eval_every": 25}  # eval every 25: ASHA's rung (68) acts at step 75
STARTUP_TRIALS = 4  # TPE samples at random until this many trials finished (the known points count)
METRIC, MODE = "val/ppl", "min"
Sampler = Literal["tpe", "random"]
Scheduler = Literal["asha", "none"]  # none: no early stopping (divergence still stops a trial)
SAMPLERS: tuple[str, ...] = get_args(Sampler)
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)
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
    sampler: Sampler = "tpe"
    """tpe (seeded, random for its first STARTUP_TRIALS) or random."""
    scheduler: Scheduler = "asha"
    """asha (early stopping) or none (every trial runs to train.steps unless it diverges)."""
    grace_period: int | None = None
    """ASHA's first rung in steps (default: past the space's longest λ warmup, see `_grace_period`)."""
    reduction_factor: float = 2
    """ASHA's reduction factor."""
    ppl_threshold: float | None = None
    """val/ppl above which a trial has diverged (default: `checks.default_ppl_threshold` of the base config, i.e.
    checks.ppl_at_10 with absolute thresholds and none with relative ones, where each run stops itself)."""
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
        check_modes(s.sampler, s.scheduler)
        if not (math.isfinite(s.cpus_per_trial) and s.cpus_per_trial > 0):
            raise ConfigError(f"--cpus-per-trial must be a finite number > 0, got {s.cpus_per_trial}")
        if not (math.isfinite(s.gpus_per_trial) and s.gpus_per_trial >= 0):
            raise ConfigError(f"--gpus-per-trial must be a finite number >= 0, got {s.gpus_per_trial}")
        if s.ppl_threshold is not None and not (math.isfinite(s.ppl_threshold) and s.ppl_threshold > 0):
            raise ConfigError(f"ppl_threshold must be a finite number > 0, got {s.ppl_threshold}")


def check_modes(sampler: str, scheduler: str, where: str = "--") -> None:
    """The one check of the two modes (the CLI's flags and search.json): ConfigError naming the field."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"{where}sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"{where}scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")


@dataclass(frozen=True)
class StudySettings:
    """What search.json records under "settings": the `SearchSettings` that shape the study and its tables, with
    their defaults resolved at the experiment's first run (every later run and `--resume` reads them back)."""
    params: list[str]
    """The searched config keys (the space's parameters), sorted."""
    points: list[dict]
    """The known points evaluated first while the study is empty."""
    grace_period: int
    """ASHA's first rung, in steps."""
    max_t: int
    """train.steps of the base config: ASHA's last rung and a trial's full length."""
    reduction_factor: float
    """ASHA's reduction factor."""
    runaway_patience: int
    """Evaluations with the temperature at a bound before a trial counts as a runaway (0 = off)."""
    ppl_threshold: float | None
    """val/ppl above which a trial has diverged (None with relative thresholds: each run stops itself)."""
    seed: int
    """Seed of the sampler's first run."""
    cpus_per_trial: float
    """CPUs per trial."""
    gpus_per_trial: float
    """GPUs per trial."""
    sampler: Sampler = "tpe"
    """tpe or random (search.json files written before the option existed: tpe)."""
    scheduler: Scheduler = "asha"
    """asha or none (search.json files written before the option existed: asha)."""

    @classmethod
    def from_dict(cls, data: Any, source: str = "search.json") -> "StudySettings":
        """The "settings" block of a search.json; ConfigError (one line, naming `source` and the key) for an unknown
        key, a missing one or a value of the wrong type."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: settings must be a mapping, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown settings {', '.join(unknown)} (known: {', '.join(known)})")
        missing = [name for name, f in known.items() if name not in data and f.default is MISSING]
        if missing:
            raise ConfigError(f"{source}: settings lack {', '.join(missing)}")
        for name, value in data.items():
            kind, optional = _json_type(cls, name)
            if not (_is(value, kind) or (value is None and optional)):
                raise ConfigError(f"{source}: settings.{name} must be {kind.__name__}"
                                  f"{' or null' if optional else ''}, got {value!r}")
        check_modes(data.get("sampler", "tpe"), data.get("scheduler", "asha"), f"{source}: settings.")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.cache
def _json_type(cls: type, name: str) -> tuple[type, bool]:
    """(the JSON type a field's value must have, whether null is allowed), read off its annotation: a Literal is
    str, `list[...]` is list, `X | None` is X or null."""
    hint, optional = get_type_hints(cls)[name], False
    if get_origin(hint) in (Union, UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        hint, optional = args[0], len(args) < len(get_args(hint))
    origin = get_origin(hint)
    if origin is Literal:
        return type(get_args(hint)[0]), optional
    return (origin or hint), optional


def _is(value: Any, kind: type) -> bool:
    """JSON's view of a type: an int is a float too, a bool is neither."""
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
