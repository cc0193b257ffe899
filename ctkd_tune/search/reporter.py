"""Watching a search through Ray: the live console table, named trial actors, per-trial Ray metrics (gauges).

    tune.RunConfig(progress_reporter=LiveReporter(max_t=150, ppl_threshold=..., runaway_patience=3), ...)
    tune.TuneConfig(trial_name_creator=ray_trial_name, trial_dirname_creator=ray_trial_dirname, ...)
    trainable = named_trainable(tune.with_parameters(train_ctkd, base=...))   # actors: CTKDTrial, repr = name
    gauges = TrialGauges("smoke", "t07-cosine-tau1.0-5.0-lam0.5"); gauges.set(metrics)     # inside a trial

The gauges are `ray.util.metrics.Gauge`s, exported by each node's metrics agent in Prometheus text format with
Ray's `ray_` prefix (`ray_ctkd_val_ppl{experiment="smoke",trial="t07-cosine-tau1.0-5.0-lam0.5"}`); Ray's
Prometheus/Grafana set-up (docs/search.md) and the Grafana dashboard in ctkd_tune/search/grafana/ plot them per
trial. Like the rest of Ray's metrics, the export port has no authentication.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable

from ray.tune import ProgressReporter

from ctkd_tune.search.names import OPTUNA_TRIAL_KEY, name_of_config, path_name
from ctkd_tune.search.status import TrialRow, render, should_print, signature

GAUGES = {  # metric key → (gauge name, description)
    "val/ppl": ("ctkd_val_ppl", "held-out student perplexity at the last evaluation"),
    "ctkd/temperature": ("ctkd_temperature", "temperature tau (mean over tokens for per-token modes)"),
    "ctkd/temperature_min": ("ctkd_temperature_min", "smallest per-token temperature of the step"),
    "ctkd/temperature_max": ("ctkd_temperature_max", "largest per-token temperature of the step"),
    "ctkd/lambda": ("ctkd_lambda", "gradient-reversal strength lambda"),
    "train/loss": ("ctkd_train_loss", "training loss of the step"),
    "train/tokens_per_s": ("ctkd_tokens_per_s", "training tokens per second"),
    "step": ("ctkd_step", "training step"),
}
TAG_KEYS = ("experiment", "trial")


def ray_trial_name(trial) -> str:
    """Tune's trial_name_creator: the readable name (the Ray id when the searcher gave no Optuna number)."""
    config = trial.config or {}
    return name_of_config(config) if config.get(OPTUNA_TRIAL_KEY) is not None else f"t-{trial.trial_id}"


def ray_trial_dirname(trial) -> str:
    """Tune's trial_dirname_creator: the same name (ASCII, unique: the Optuna number is)."""
    return path_name(ray_trial_name(trial))


def named_trainable(trainable):
    """The function trainable as a class Tune runs as actor `CTKDTrial`, whose repr (the dashboard's actor name
    and the prefix of its log lines) is the trial's readable name instead of `ImplicitFunc`."""
    from ctkd_tune.search.compat import wrap_function_trainable

    base = wrap_function_trainable(trainable)

    class CTKDTrial(base):
        def __repr__(self) -> str:
            return self.trial_name or "CTKDTrial"

    CTKDTrial.__qualname__ = CTKDTrial.__name__  # the dashboard's class column shows the qualified name
    return CTKDTrial


def rows_from_trials(trials: Iterable[Any], max_t: int, ppl_threshold: float, runaway_patience: int) -> list[TrialRow]:
    """Ray trials (status, config, last_result) → table rows; a finished trial's state is `trial_outcome`'s."""
    from ctkd_tune.search.results import TrialStatus, live_status

    rows = []
    for trial in trials:
        result = trial.last_result or {}
        state = live_status(trial.status, result, ppl_threshold, runaway_patience)
        ppl = result.get("val/ppl") if result.get("status") != TrialStatus.DIVERGED else None
        rows.append(TrialRow(name_of_config(trial.config or {}), state, int(result.get("step") or 0), max_t, ppl,
                             result.get("ctkd/temperature"), result.get("ctkd/lambda")))
    return rows


class LiveReporter(ProgressReporter):
    """Ray Tune progress reporter printing `watch.render`'s table: at once when a trial starts or ends, at most
    every `period_s` while only results arrive, and at the end."""

    def __init__(self, max_t: int, ppl_threshold: float, runaway_patience: int, period_s: float = 30.0,
                 title: str = "search", stream=None):
        self.max_t, self.ppl_threshold, self.runaway_patience = max_t, ppl_threshold, runaway_patience
        self.period_s, self.title, self.stream = period_s, title, stream
        self.start_time, self.total_samples = time.time(), None
        self._last_sig, self._last_time, self._seen, self._printed = None, None, {}, None
        self._rate_since, self._rate_steps = None, {}

    def setup(self, start_time=None, total_samples=None, metric=None, mode=None, **kwargs) -> None:
        self.start_time = start_time or time.time()
        self.total_samples = total_samples

    def should_report(self, trials, done: bool = False) -> bool:
        rows = self._rows(trials)
        seen = {r.name: (r.state, r.step) for r in rows}
        changed, self._seen = seen != self._seen, seen
        since = None if self._last_time is None else time.time() - self._last_time
        if done:  # the final table, unless the last one printed already showed exactly this
            return seen != self._printed
        return should_print(self._last_sig, rows, since, self.period_s, changed)

    def report(self, trials, done: bool, *sys_info: str) -> None:
        rows = self._rows(trials)
        now = time.time()
        self._last_sig, self._last_time = signature(rows), now
        self._printed = {r.name: (r.state, r.step) for r in rows}
        text = render(rows, elapsed_s=now - self.start_time, step_rate=self._step_rate(rows, now),
                      num_samples=self.total_samples, max_t=self.max_t, title=self.title)
        print(text + "\n", file=self.stream or sys.stdout, flush=True)

    def _rows(self, trials) -> list[TrialRow]:
        return rows_from_trials(trials, self.max_t, self.ppl_threshold, self.runaway_patience)

    def _step_rate(self, rows: list[TrialRow], now: float) -> float | None:
        """Steps per second over all trials, measured from the first report this reporter saw (a resumed trial's
        earlier steps do not count)."""
        if self._rate_since is None:
            self._rate_since, self._rate_steps = now, {r.name: r.step for r in rows}
            return None
        steps = sum(r.step - self._rate_steps.get(r.name, 0) for r in rows)
        return steps / (now - self._rate_since) if steps > 0 and now > self._rate_since else None


class TrialGauges:
    """This trial's `ray.util.metrics` gauges, tagged with the experiment and the trial name."""

    def __init__(self, experiment: str, trial: str):
        from ray.util.metrics import Gauge

        self.tags = {"experiment": path_name(experiment), "trial": path_name(trial)}  # Ray takes ASCII only
        self.gauges = {key: Gauge(name, description=text, tag_keys=TAG_KEYS) for key, (name, text) in GAUGES.items()}

    def set(self, metrics: dict[str, Any]) -> None:
        for key, gauge in self.gauges.items():
            value = metrics.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
                gauge.set(float(value), tags=self.tags)
