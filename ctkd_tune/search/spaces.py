"""Search spaces for `ctkd-tune search`: load one by name, and prove it valid before Ray starts.

A space is a define-by-run Optuna function `space(trial) -> dict | None` that only calls `trial.suggest_*`, with
the config's dotted keys as parameter names (`temperature.tau_min`, `schedule.type`, ...). Three ways to name one:

    ctkd-tune search                                        # search_spaces.default:default_space
    ctkd-tune search --space mypkg.spaces:narrow            # an importable module:function
    ctkd-tune search --space spaces/mine.py:narrow          # a Python file:function
    ctkd-tune search --space search_spaces/example.yaml     # a YAML file (format below)

YAML: one entry per parameter, `name: {type: float|int|categorical, low, high, log, step, choices}`, e.g.
    temperature.tau_max: {type: float, low: 3.0, high: 8.0}
    schedule.type: {type: categorical, choices: [cosine, linear]}

`check_space` runs the space on throwaway in-memory studies (random and corner samples, so dependent ranges are
probed at their extremes) and builds every sampled config: a bad import, a bad range, an unknown key or an
impossible config (tau_min ≥ tau_max, ...) becomes one ConfigError line.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import random
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from ctkd_tune.config import Config, ConfigError, apply_overrides, from_dict, load_yaml_file
from ctkd_tune.search.arms import KNOWN_POINTS
from ctkd_tune.values import error_line

__all__ = ["DEFAULT_SPACE", "YamlSpace", "SpaceInfo", "load_space", "check_space", "trial_config"]

DEFAULT_SPACE = "search_spaces.default:default_space"
Space = Callable[[Any], "dict[str, Any] | None"]
YAML_FIELDS = {"type", "low", "high", "log", "step", "choices"}
PROBES = 48  # samples per sampler (random, corners) when checking a space; each builds one Config (~0.1 ms)


class YamlSpace:
    """A space read from YAML: independent float/int/categorical parameters (a class, so the searcher pickles)."""

    def __init__(self, params: dict[str, dict[str, Any]], source: str = "<yaml>"):
        self.params, self.source = params, source

    def __call__(self, trial) -> None:
        for name, p in self.params.items():
            if p["type"] == "categorical":
                trial.suggest_categorical(name, p["choices"])
            elif p["type"] == "int":
                trial.suggest_int(name, p["low"], p["high"], log=p.get("log", False), step=p.get("step", 1))
            else:
                trial.suggest_float(name, p["low"], p["high"], log=p.get("log", False), step=p.get("step"))
        return None

    @classmethod
    def from_file(cls, path: str | Path) -> "YamlSpace":
        path = Path(path)
        data = load_yaml_file(path, what="--space file")
        if not isinstance(data, dict) or not data:
            raise ConfigError(f"--space {path}: expected a mapping of parameter name → {{type, low, high, ...}}")
        return cls({str(name): _yaml_param(path, str(name), spec) for name, spec in data.items()}, str(path))


def _yaml_param(path: Path, name: str, spec: Any) -> dict[str, Any]:
    where = f"--space {path}: {name}"
    if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
        raise ConfigError(f"{where}: expected {{type: float|int|categorical, ...}}, got {spec!r}")
    unknown = set(spec) - YAML_FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field '{sorted(unknown)[0]}' (allowed: {', '.join(sorted(YAML_FIELDS))})")
    spec = dict(spec)
    if spec["type"] == "categorical":
        if not isinstance(spec.get("choices"), list) or not spec["choices"]:
            raise ConfigError(f"{where}: categorical needs a non-empty list 'choices'")
        return spec
    number = int if spec["type"] == "int" else float
    for key in ("low", "high", "step"):
        if key in spec and spec[key] is not None:
            try:  # YAML 1.1 reads 1e-3 as a string; accept it as the number it obviously is
                value = float(spec[key])
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: {key} must be a number, got {spec[key]!r}") from None
            if not math.isfinite(value):
                raise ConfigError(f"{where}: {key} must be finite, got {spec[key]!r}")
            if number is int and value != int(value):
                raise ConfigError(f"{where}: {key} must be an integer, got {spec[key]!r}")
            spec[key] = number(value)
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: {spec['type']} needs 'low' and 'high'")
    if not spec["low"] <= spec["high"]:
        raise ConfigError(f"{where}: low ({spec['low']}) must not exceed high ({spec['high']})")
    if spec.get("log") and spec["low"] <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {spec['low']}")
    return spec


def load_space(spec: str | None) -> Space:
    """`None` (the default space), `module:function`, `file.py:function` or `file.yaml` → a space callable."""
    spec = spec or DEFAULT_SPACE
    if spec.endswith((".yaml", ".yml")):
        return YamlSpace.from_file(spec)
    module_name, colon, func_name = spec.rpartition(":")
    if not colon or not module_name or not func_name:
        raise ConfigError(f"--space must be module:function, file.py:function or a .yaml file, got {spec!r}")
    try:
        if module_name.endswith(".py"):
            module = _import_file(Path(module_name))
        else:
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as err:  # ImportError, or anything the module raises at import
        raise ConfigError(f"--space {spec}: cannot import {module_name}: {type(err).__name__}: {err}") from None
    space = getattr(module, func_name, None)
    if space is None:
        raise ConfigError(f"--space {spec}: {module_name} has no attribute {func_name!r}")
    if not callable(space):
        raise ConfigError(f"--space {spec}: {func_name} is not callable")
    return space


def _import_file(path: Path):
    """Import file.py as module `stem`, with its folder on sys.path so the searcher's state can be unpickled."""
    if not path.is_file():
        raise ConfigError(f"--space: no such file: {path}")
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(path.stem)


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> Config:
    """The config of one trial: the base config (nested dict) with the space's dotted-key suggestions applied."""
    return from_dict(apply_overrides(base, params))


@dataclass
class SpaceInfo:
    """What `check_space` learned: the parameter names, the longest λ warmup, and the known points that fit."""
    params: list[str]
    max_warmup_ratio: float
    points: list[dict[str, Any]] = field(default_factory=list)
    dropped_points: int = 0


def check_space(space: Space, base_cfg: Config, name: str = "space", points: list[dict] | None = None) -> SpaceInfo:
    """Run `space` on throwaway studies and build every sampled config; raise one ConfigError line on any problem."""
    base = base_cfg.to_dict()
    params: dict[str, None] = {}
    warmups = [base_cfg.schedule.warmup_ratio]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for sampler in (optuna.samplers.RandomSampler(seed=0), _CornerSampler(seed=0)):
        study = optuna.create_study(sampler=sampler)
        for _ in range(PROBES):
            trial = study.ask()
            suggested = _run_space(space, trial, name)
            _check_config(base, suggested, name)
            params.update(dict.fromkeys(suggested))
            dist = trial.distributions.get("schedule.warmup_ratio")
            warmups += [suggested.get("schedule.warmup_ratio", 0.0), getattr(dist, "high", 0.0)]
            study.tell(trial, 0.0)
    if not params:
        raise ConfigError(f"search space {name} suggests no parameters")
    points = KNOWN_POINTS if points is None else points
    fitting = [p for p in (_fit_point(space, base, point, params) for point in points) if p]
    return SpaceInfo(sorted(params), max(warmups), fitting, len(points) - len(fitting))


def _run_space(space: Space, trial, name: str) -> dict[str, Any]:
    try:
        returned = space(trial)
    except Exception as err:  # optuna's ValueError for low > high, a TypeError in user code, ...
        raise ConfigError(f"search space {name} failed: {error_line(err, with_type=True)}") from None
    if returned is not None and not (isinstance(returned, dict) and all(isinstance(k, str) for k in returned)):
        raise ConfigError(f"search space {name} must return None or a dict with str keys, "
                          f"got {type(returned).__name__}")
    suggested = {**trial.params, **(returned or {})}
    for key in suggested:
        if "/" in key:  # Ray's OptunaSearch would nest it
            raise ConfigError(f"search space {name}: parameter {key!r} must be a dotted config key, without '/'")
    return suggested


def _check_config(base: dict[str, Any], suggested: dict[str, Any], name: str) -> Config:
    try:
        return trial_config(base, suggested)
    except ConfigError as err:
        shown = ", ".join(f"{k}={_short(v)}" for k, v in suggested.items())
        raise ConfigError(f"search space {name} can produce an invalid config ({err}) e.g. with {shown}") from None


def _fit_point(space: Space, base: dict[str, Any], point: dict[str, Any], params: dict) -> dict[str, Any] | None:
    """The part of a known point this space searches, if its values lie in the space's ranges; else None."""
    point = {k: v for k, v in point.items() if k in params}
    if not point:
        return None
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(point)
    trial = study.ask()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            returned = space(trial) or {}
        except Exception:
            return None
    suggested = {**trial.params, **returned}
    out_of_range = any("out of" in str(w.message) for w in caught)
    if out_of_range or any(suggested.get(k) != v for k, v in point.items()):
        return None
    try:
        trial_config(base, suggested)
    except ConfigError:
        return None
    return point


class _CornerSampler(optuna.samplers.BaseSampler):
    """Samples every numeric parameter at its low or high end (categoricals at random): probes dependent ranges."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, distribution):
        if isinstance(distribution, optuna.distributions.CategoricalDistribution):
            return self.rng.choice(distribution.choices)
        return self.rng.choice([distribution.low, distribution.high])


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else repr(value)
