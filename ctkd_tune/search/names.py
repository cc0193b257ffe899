"""Readable trial names: one name per trial in the live table, Ray, trials.parquet, the plots and the report.

    trial_name(7, {"schedule.type": "cosine", "temperature.tau_min": 1.0, "temperature.tau_max": 5.0,
                   "schedule.lambda_max": 0.5})            # 't07-cosine-tau1.0-5.0-lam0.5'

A name is the trial's number in the Optuna study (unique within an experiment, so the name is too) followed by
its distinguishing knobs, rounded for reading. It depends only on the number and the searched params, which a
resumed search restores unchanged: the name is stable across `--resume`. It is plain ASCII (tau, lam rather
than τ, λ) because the same string is the trial's directory, the Ray trial and actor name, a Prometheus label
(Ray's metrics accept ASCII only), a validation arm's folder and a row label: one spelling everywhere.
"""

from __future__ import annotations

import re
from typing import Any, Callable

OPTUNA_TRIAL_KEY = "optuna_trial"  # same key as ctkd_tune.search.results.OPTUNA_TRIAL_KEY (kept import-free here)


def _num(value: Any) -> str:
    """Two significant digits, at least one decimal: 1.0, 5.0, 0.25, 12.0."""
    text = f"{float(value):.2g}"
    if "e" in text:
        text = f"{float(value):.2f}".rstrip("0")
    return text if "." in text else f"{text}.0"


# (config key, how it reads in a name); knobs absent from the params are left out.
_PARTS: list[tuple[tuple[str, ...], Callable[..., str]]] = [
    (("temperature.mode",), lambda mode: mode),
    (("loss.divergence",), lambda d: _DIVERGENCES.get(d, d)),
    (("schedule.type",), lambda kind: kind),
    (("temperature.tau_min", "temperature.tau_max"), lambda lo, hi: f"tau{_num(lo)}-{_num(hi)}"),
    (("temperature.fixed_value",), lambda tau: f"tau{_num(tau)}"),
    (("schedule.lambda_max",), lambda lam: f"lam{_num(lam)}"),
    (("temperature.granularity",), lambda g: "tok" if g == "token" else ""),
]
_ASCII = {"τ": "tau", "λ": "lam"}
_DIVERGENCES = {"forward_kl": "fkl", "reverse_kl": "rkl", "skew_kl": "skl", "jsd": "jsd"}


def trial_name(number: int | None, params: dict[str, Any]) -> str:
    """`tNN-knob-knob…` from the Optuna trial number and the searched params (dotted config keys)."""
    parts = [f"t{number:02d}" if number is not None else "t??"]
    for keys, fmt in _PARTS:
        if all(params.get(key) is not None for key in keys):
            part = fmt(*(params[key] for key in keys))
            if part:
                parts.append(str(part))
    return path_name("-".join(parts))


def path_name(name: str) -> str:
    """Any name as a filesystem- and URL-safe ASCII string (τ → tau, λ → lam, anything else odd → _)."""
    for symbol, word in _ASCII.items():
        name = name.replace(symbol, word)
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100]


def name_of_config(config: dict[str, Any]) -> str:
    """The trial name from a Ray trial config (the searched params plus the Optuna trial number)."""
    params = {k: v for k, v in config.items() if k != OPTUNA_TRIAL_KEY}
    return trial_name(config.get(OPTUNA_TRIAL_KEY), params)
