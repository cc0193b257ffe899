"""The temperature drift check (`checks.temperature_drift`): constructed histories, real tiny runs, and where it is
recorded (summary.json's checks, trials.parquet, the validation's run rows).

Drift, on log τ as shares of the way from tau_init to the bound the temperature moved towards: the run moved more
than checks.drift_share (0.5) of that way from its start (tau_init) to its last logged temperature, and either over
the last quarter it still moved the same way at ≥ 1/5 of its average pace, or it went ≥ 0.9 of the way (arrived);
a runaway (at the bound) is not also a drift.
"""

import math

import pandas as pd
import pytest

from ctkd_tune import distill, load_config
from ctkd_tune.run.checks import LATE_PACE, drift_shares, sanity_checks, temperature_drift, temperature_runaway
from ctkd_tune.config import ConfigError

STEPS = 150


def config(mode="learnable", tau_min=1.35, tau_max=7.58, tau_init=1.88, *more):
    return load_config(preset="tiny", overrides=[f"train.steps={STEPS}", f"temperature.mode={mode}",
                                                 f"temperature.tau_min={tau_min}", f"temperature.tau_max={tau_max}",
                                                 f"temperature.tau_init={tau_init}", *more])


def history(curve, steps=STEPS):
    """One logged row per step, τ = curve(fraction of the run done)."""
    return [{"step": s, "ctkd/temperature": curve(s / steps)} for s in range(1, steps + 1)]


def steady(start, end):
    return lambda p: start + (end - start) * p


def test_the_ablations_steady_climb_drifts():
    """README: the learnable ablation climbed 1.88 → 4.68 of [1.35, 7.58] (in log τ: 0.912 of the 1.394 from 1.88
    to 7.58 = 0.65)."""
    cfg = config()
    climb = history(steady(1.88, 4.68))
    moved, late = drift_shares(climb, cfg)
    assert moved == pytest.approx(math.log(4.68 / 1.88) / math.log(7.58 / 1.88), rel=1e-2)
    assert late > 0.05 * moved  # the last quarter (τ 3.98 → 4.68) moved on: 0.094 of the range
    assert temperature_drift(climb, cfg) and not temperature_runaway(climb, cfg)
    down = history(steady(6.0, 6.0 * 1.88 / 4.68))  # the same move towards the lower bound: 0.61 of the way
    assert temperature_drift(down, config(tau_init=6.0))
    looser = config("learnable", 1.35, 7.58, 1.88, "checks.drift_share=0.7")  # 0.65 < 0.7: not a drift
    assert not temperature_drift(climb, looser)


def test_a_climb_to_the_bound_from_an_init_near_it_drifts():
    """README (divergence search): the learnable ablation of a per-token arm went 3.14 → 5.91 → 6.00 of
    [0.683, 6.12]: 0.30 of the log range, but 0.97 of the way from its init to tau_max, and not yet within the
    runaway tolerance of it."""
    cfg = config("learnable", 0.683, 6.12, 3.14)
    climb = history(lambda p: 3.14 * (6.0 / 3.14) ** (1 - (1 - p) ** 3))  # fast, then slower, still rising
    moved, late = drift_shares(climb, cfg)
    assert moved == pytest.approx(math.log(6.0 / 3.14) / math.log(6.12 / 3.14), rel=1e-3) and moved > 0.95
    assert late < LATE_PACE / 4 * moved  # barely moving at the end: it arrived, rather than kept going
    assert temperature_drift(climb, cfg) and not temperature_runaway(climb, cfg)
    halfway = history(lambda p: 3.14 * (4.4 / 3.14) ** (1 - (1 - p) ** 3))  # 0.51 of the way, then settled
    assert drift_shares(halfway, cfg)[0] > 0.5 and not temperature_drift(halfway, cfg)
    # the adversary pulling the same arm down 3.14 → 1.09 → 1.15 (towards τ* ≈ 1, then back up a little): no drift
    pulled = history(lambda p: 1.09 + 2.05 * math.exp(-12 * p) + 0.06 * max(0.0, p - 0.5) / 0.5)
    assert drift_shares(pulled, cfg)[0] < -0.5 and not temperature_drift(pulled, cfg)


def test_settling_temperatures_do_not_drift():
    # README's CTKD arm: 1.47 → 1.21 of [0.68, 5.72], pulled towards τ* ≈ 1 and settling there
    settle = history(lambda p: 1.21 + 0.26 * math.exp(-6 * p))
    assert not temperature_drift(settle, config("ctkd", 0.68, 5.72, 1.47))
    # far enough (2 → 6 of [1, 8]: 0.79 of the way to 8), but it stopped rising at 60% of the run
    plateau = history(lambda p: 2.0 + 4.0 * min(1.0, p / 0.6))
    cfg = config("ctkd", 1.0, 8.0, 2.0)
    moved, late = drift_shares(plateau, cfg)
    assert moved > 0.5 and late == 0.0 and not temperature_drift(plateau, cfg)
    assert temperature_drift(history(steady(2.0, 6.0)), cfg)  # the same move, still going: a drift
    assert not temperature_drift(history(steady(2.0, 3.0)), cfg)  # still going, but only 0.29 of the way
    # parked at the bound over the last half: a runaway, not a drift
    parked = history(lambda p: 2.0 + 6.0 * min(1.0, 2 * p))
    assert temperature_runaway(parked, cfg) and not temperature_drift(parked, cfg)


def test_only_learned_temperatures_drift():
    anneal = load_config(preset="tiny", overrides=[f"train.steps={STEPS}", "temperature.mode=anneal"])
    assert drift_shares(history(steady(4.0, 1.5)), anneal) is None  # a schedule moves by design
    assert not temperature_drift(history(steady(4.0, 1.5)), anneal)
    assert drift_shares([], config()) is None


def test_drift_is_a_sanity_check():
    cfg = config()
    checks = sanity_checks(history(steady(1.88, 4.68)), cfg)
    drift = checks["no_temperature_drift"]
    assert not drift["passed"] and drift["limit"] == 0.5 and drift["value"]["moved"] == pytest.approx(0.65, abs=0.01)
    assert not checks["all_passed"]["passed"]
    assert checks["no_temperature_runaway"]["passed"]


@pytest.mark.parametrize("share", ["0", "-0.1", "1.5", "nan", "inf"])
def test_drift_share_must_lie_in_0_1(share):
    with pytest.raises(ConfigError, match=r"^checks.drift_share must be in \(0, 1\]"):
        load_config(preset="tiny", overrides=[f"checks.drift_share={share}"])


def test_real_runs_plain_minimisation_drifts_and_ctkd_does_not():
    """The tiny preset, 60 steps. Its τ²·KL still rises at τ = 2, so plain minimisation lowers τ: from 4 in
    [0.5, 8] at temperature.lr 0.3 it slides to ≈ 0.63 and is still going at the end (a drift, not yet a runaway);
    CTKD at temperature.lr 1.0 raises τ from 2 to ≈ 3 of [1, 5] (≈ 0.44 of the way to 5): no drift."""
    quiet = dict(report=lambda metrics, checkpoint: None, progress=False)
    wide = ["temperature.tau_min=0.5", "temperature.tau_max=8", "temperature.tau_init=4"]
    learnable = distill(load_config(preset="tiny", overrides=["temperature.mode=learnable", "temperature.lr=0.3",
                                                               *wide]), **quiet)
    assert learnable.history[-1]["ctkd/temperature"] < 1.0
    assert not learnable.summary["checks"]["no_temperature_drift"]["passed"]
    assert not learnable.summary["temperature_runaway"]
    ctkd = distill(load_config(preset="tiny", overrides=["temperature.mode=ctkd", "temperature.lr=1.0"]), **quiet)
    assert ctkd.history[-1]["ctkd/temperature"] > 2.5
    assert ctkd.summary["checks"]["no_temperature_drift"]["passed"]
    from ctkd_tune.validate.verdict import run_metrics

    assert run_metrics(learnable.summary, learnable.history, 60)["drift"]
    assert not run_metrics(ctkd.summary, ctkd.history, 60)["drift"]


class _Result:
    """What `results.build_tables` reads of a Ray Tune Result."""

    def __init__(self, trial_id, config, reports):
        self.config, self.error, self.path = config, None, f"/ray/{trial_id}"
        self.metrics = {**reports[-1], "trial_id": trial_id}
        self.metrics_dataframe = pd.DataFrame(reports)


def test_trials_parquet_has_a_drift_column():
    from ctkd_tune.search.results import build_tables

    base = config("learnable").to_dict()
    reports = lambda curve: [{"step": s, "val/ppl": 300.0, "ctkd/temperature": curve(s / STEPS), "ctkd/lambda": 0.0,
                              "status": "completed" if s == STEPS else "running"} for s in range(15, STEPS + 1, 15)]
    results = [_Result("climbs", {}, reports(steady(1.88, 4.68))),
               _Result("settles", {"temperature.tau_init": 2.5}, reports(lambda p: 2.0 + 0.5 * math.exp(-5 * p)))]
    trials, _ = build_tables(results, base, ppl_threshold=1e4, runaway_patience=0)
    assert {t["trial_id"]: t["temperature_drift"] for t in trials} == {"climbs": True, "settles": False}
