"""`ctkd-tune validate`: the statistics, the verdict on constructed tables, and real runs on a tiny experiment.

The experiment is fabricated with the search's own table writer (`results.write_tables`), so validate reads the
same schema as after `ctkd-tune search`; runs use the tiny preset for 20 steps on a local Ray (2 CPUs).
"""

import json
import math

import pandas as pd
import pytest

from ctkd_tune.cli import main
from ctkd_tune.config import ConfigError, load_config
from ctkd_tune.validate.stats import has_spike, paired_ci, seeds_needed, t_quantile
from ctkd_tune.validate.verdict import Resolve, Target, judge
from ctkd_tune.validate.table import format_table

STEPS = 20
KNOBS = [  # searched knobs of the fabricated trials: (params, status, final val/ppl)
    ({"temperature.tau_max": 4.0, "schedule.lambda_max": 0.8, "schedule.type": "cosine"}, "completed", 250.0),
    ({"temperature.tau_max": 6.0, "schedule.lambda_max": 0.2, "schedule.type": "linear"}, "completed", 260.0),
    ({"temperature.tau_max": 3.0, "schedule.lambda_max": 1.5, "schedule.type": "constant"}, "completed", 280.0),
    ({"temperature.tau_max": 5.0, "schedule.lambda_max": 0.1, "schedule.type": "linear"}, "pruned", 300.0),
]


def fabricate_experiment(directory, knobs=KNOBS, steps=STEPS, with_study=True, report_times=True):
    """results/NAME/ as `ctkd-tune search` writes it: trials.parquet, curves.parquet, search.json, optuna.db."""
    from ctkd_tune.search.results import write_tables

    directory.mkdir(parents=True, exist_ok=True)
    base = load_config(preset="tiny", overrides=[f"train.steps={steps}", "train.data_seed=0", "train.init_seed=0"])
    trials, curves = [], []
    for number, (params, status, ppl) in enumerate(knobs):
        cfg = load_config(preset="tiny", overrides=[f"train.steps={steps}", "train.data_seed=0", "train.init_seed=0",
                                                    *(f"{k}={v}" for k, v in params.items())])
        last = steps if status == "completed" else steps // 2
        trial_id = f"t{number:04d}"
        trials.append({"trial_id": trial_id, "optuna_trial": number, "optuna_state": status.upper(), "run": "r1",
                       "status": status, "stop_reason": None if status == "completed" else "stopped early by ASHA",
                       "final_val_ppl": ppl, "best_val_ppl": ppl, "best_step": last, "final_val_kl": 1.0,
                       "final_top1_agreement": 0.1, "final_temperature": 2.0 + 0.1 * number, "final_lambda": 0.5,
                       "steps": last, "wall_time_s": 1.0, "path": f"/ray/{trial_id}",
                       "params": json.dumps(params, sort_keys=True),
                       **{k: json.dumps(v) if isinstance(v, list) else v for k, v in cfg.flat().items()}})
        for step in range(2, last + 1, 4):
            curves.append({"trial_id": trial_id, "optuna_trial": number, "step": step,
                           "status": status if step == last else "running", "val/ppl": ppl * (1 + 2 / step),
                           "ctkd/temperature": 2.0 + 0.01 * number * step, "ctkd/lambda": min(1.0, step / last),
                           **({"reported_at": 1e9 + 100 * number + step} if report_times else {})})
    write_tables(directory, trials, curves)
    (directory / "search.json").write_text(json.dumps({"name": directory.name, "base": base.to_dict(), "space": None,
                                                       "settings": {"params": sorted(KNOBS[0][0])}, "runs": []}))
    if with_study:
        _study(directory, knobs)
    return directory


def _study(directory, knobs):
    import optuna

    dists = {"temperature.tau_max": optuna.distributions.FloatDistribution(2.0, 8.0),
             "schedule.lambda_max": optuna.distributions.FloatDistribution(0.05, 2.0, log=True),
             "schedule.type": optuna.distributions.CategoricalDistribution(["cosine", "exp", "linear", "constant"])}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=directory.name, storage=f"sqlite:///{directory / 'optuna.db'}")
    for params, status, ppl in knobs:
        state = optuna.trial.TrialState.COMPLETE if status == "completed" else optuna.trial.TrialState.PRUNED
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, state=state,
                                                  value=ppl if status == "completed" else None))


# --- statistics ---------------------------------------------------------------------------------------------------

def test_t_quantile_matches_the_tables():
    for df, expected in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)):
        assert t_quantile(0.95, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(0.99, 5) == pytest.approx(4.0321, abs=1e-4)


def test_paired_ci_against_a_hand_computation():
    # differences 2-1, 5-2, 4-1 = 1, 3, 3: mean 7/3, sd = sqrt(((−4/3)² + 2·(2/3)²)/2) = sqrt(4/3)
    ci = paired_ci([2.0, 5.0, 4.0], [1.0, 2.0, 1.0])
    half = 4.302653 * math.sqrt(4 / 3) / math.sqrt(3)
    assert ci.n == 3 and ci.mean == pytest.approx(7 / 3)
    assert ci.low == pytest.approx(7 / 3 - half, rel=1e-6) and ci.high == pytest.approx(7 / 3 + half, rel=1e-6)
    one = paired_ci([2.0], [1.0])
    assert one.mean == 1.0 and one.low is None and one.high is None and one.n == 1


def test_seeds_needed_against_a_hand_computation():
    """n = smallest n ≥ 2 with n ≥ ((t_{.975, n−1} + t_{.80, n−1}) · sd / difference)².

    sd = difference: n = 9 gives (2.3060 + 0.8889)² = 10.21 > 9, n = 10 gives (2.2622 + 0.8834)² = 9.89 ≤ 10 → 10
    (the exact non-central-t power at n = 10 is 0.803, G*Power's answer for dz = 1 too).
    sd = 2 · difference: n = 33 gives 4 · (2.0369 + 0.8532)² = 33.41 > 33, n = 34 gives 4 · (2.0345 + 0.8531)² =
    33.35 ≤ 34 → 34.
    """
    for df, t80 in ((3, 0.9785), (8, 0.8889), (9, 0.8834)):  # one-sided 80% quantiles, from the tables
        assert t_quantile(0.60, df) == pytest.approx(t80, abs=1e-4)
    assert (t_quantile(0.95, 8) + t_quantile(0.60, 8)) ** 2 > 9
    assert (t_quantile(0.95, 9) + t_quantile(0.60, 9)) ** 2 <= 10
    assert seeds_needed(1.0, 1.0) == 10 and seeds_needed(3.0, 3.0) == 10  # only sd / difference matters
    assert seeds_needed(2.0, 1.0) == 34
    assert seeds_needed(0.0, 1.0) == 2  # no variance: two seeds, the fewest that show it
    assert seeds_needed(100.0, 1.0) is None  # beyond MAX_SEEDS: not resolvable in practice
    with pytest.raises(ValueError):
        seeds_needed(1.0, 0.0)


def test_spike_definition():
    assert has_spike([(10, 300.0), (20, 250.0), (30, 400.0)], total_steps=100)  # 400 > 1.5 × 250
    assert not has_spike([(10, 300.0), (20, 250.0), (30, 370.0)], total_steps=100)  # 370 < 375
    assert not has_spike([(5, 100.0), (10, 200.0), (20, 180.0)], total_steps=100)  # the jump is within the first 10%


# --- the verdict on constructed tables ----------------------------------------------------------------------------

MODES = {"fallback_A": "fixed", "fallback_B": "anneal", "fallback_C": "ctkd", "learnable": "learnable"}


def runs_table(ppl_by_arm, *, failed_checks=(), spikes=(), diverged=(), frozen=(), drift=()):
    """One row per (arm, seed); arms named trial-* are searched (ctkd), learnable is the ablation."""
    rows = []
    for arm, ppls in ppl_by_arm.items():
        kind = "search" if arm.startswith("trial-") else "ablation" if arm == "learnable" else "fallback"
        for seed, ppl in enumerate(ppls, start=1):
            bad = (arm, seed) in diverged
            rows.append({"arm": arm, "kind": kind, "label": arm, "seed": seed,
                         "temperature.mode": MODES.get(arm, "ctkd"),
                         "status": "diverged" if bad else "completed", "final_val_ppl": None if bad else ppl,
                         "checks_passed": (arm, seed) not in failed_checks, "spike": (arm, seed) in spikes,
                         "runaway": False, "drift": (arm, seed) in drift, "tau_start": 2.0, "tau_mid": 2.5,
                         "tau_end": 3.0, "tau_lo": 2.0, "tau_hi": 2.02 if arm in frozen else 3.1})
    return pd.DataFrame(rows)


FALLBACKS = {"fallback_A": [300.0, 302.0, 301.0], "fallback_B": [310.0, 312.0, 309.0],
             "fallback_C": [305.0, 303.0, 306.0]}


def test_verdict_ctkd_wins():
    runs = runs_table({"trial-3": [290.0, 291.0, 292.0], "trial-7": [295.0, 296.0, 294.0], **FALLBACKS,
                       "learnable": [299.0, 300.0, 298.0]})
    verdict = judge(runs, Target(value=320.0), seeds=[1, 2, 3])
    assert verdict.recommended == "trial-3" and verdict.ctkd_passes
    arms = verdict.arms.set_index("arm")
    assert arms.loc["trial-3", "diff_vs_A"] == pytest.approx(-10.0)
    assert arms.loc["trial-3", "ci_high"] < 0  # [290, 291, 292] − [300, 302, 301] = [−10, −11, −9]
    assert list(verdict.arms["arm"]) == ["trial-3", "trial-7", "fallback_A", "fallback_B", "fallback_C", "learnable"]
    assert "Recommended: trial-3" in "\n".join(verdict.lines)
    table = format_table(verdict.arms)
    assert "reference" in table and "PASS" in table and "-10.00 [" in table


def test_verdict_no_ctkd_config_passes():
    runs = runs_table({"trial-3": [290.0, 291.0, 292.0], "trial-7": [280.0, 350.0, 281.0], **FALLBACKS},
                      failed_checks={("trial-3", 2)}, spikes={("trial-7", 2)})
    verdict = judge(runs, Target(value=320.0), seeds=[1, 2, 3])
    assert not verdict.ctkd_passes and verdict.recommended == "fallback_A"
    text = "\n".join(verdict.lines)
    assert "NO searched CTKD configuration passes" in text and "Recommended fallback: fallback_A" in text
    why = verdict.arms.set_index("arm")["why"]
    assert "checks passed on 2/3 seeds" in why["trial-3"] and "stable on 2/3 seeds" in why["trial-7"]


def test_verdict_nothing_passes_and_the_ablation_is_never_recommended():
    runs = runs_table({"trial-3": [450.0, 460.0], "fallback_A": [410.0, 420.0], "learnable": [390.0, 395.0]})
    verdict = judge(runs, Target(value=400.0), seeds=[1, 2])
    assert verdict.arms.set_index("arm").loc["learnable", "passes"]  # it passes, but is an ablation
    assert verdict.recommended is None and "nothing to recommend" in "\n".join(verdict.lines)
    runs = runs_table({"trial-3": [300.0, 302.0], "fallback_A": [310.0, 320.0], "learnable": [290.0, 295.0]})
    verdict = judge(runs, Target(value=400.0), seeds=[1, 2])
    assert verdict.recommended == "trial-3" and "the learnable ablation (never recommended)" in verdict.lines[-1]


def test_verdict_relative_target_diverged_and_missing_seeds():
    runs = runs_table({"trial-1": [299.0, 300.0, 301.5], "trial-2": [280.0, 281.0, 282.0],
                       "trial-4": [250.0, 250.0], **FALLBACKS}, diverged={("trial-2", 3)})
    verdict = judge(runs, Target(vs="fallback_A"), seeds=[1, 2, 3])
    arms = verdict.arms.set_index("arm")
    assert arms.loc["trial-1", "passes"]  # mean 300.17 ≤ fallback A's 301
    assert not arms.loc["fallback_B", "passes"] and "target" in arms.loc["fallback_B", "why"]
    assert "did not complete" in arms.loc["trial-2", "why"] and "missing seeds [3]" in arms.loc["trial-4", "why"]
    assert verdict.recommended == "trial-1"
    text = "\n".join(verdict.lines)
    assert "— the lowest mean, not a proven win over fallback A." in text  # −0.83 [−3.96, +2.29]: a tie
    assert "trial-1 ties with fallback A, within noise: -0.83 val/ppl" in text


def test_verdict_says_when_the_winning_temperature_never_moved():
    moving = judge(runs_table({"trial-3": [290.0, 291.0], **FALLBACKS}), Target(value=400.0), seeds=[1, 2])
    assert not any("hardly moved" in line for line in moving.lines)
    frozen = judge(runs_table({"trial-3": [290.0, 291.0], "trial-5": [295.0, 296.0], **FALLBACKS},
                              frozen={"trial-3", "trial-5", "fallback_A"}), Target(value=400.0), seeds=[1, 2])
    assert frozen.recommended == "trial-3"
    notes = [line for line in frozen.lines if "hardly moved" in line]
    assert notes == [  # every learned arm, not only the recommended one; never fallback A (a fixed T by design)
        "trial-3: its temperature hardly moved (τ in [2.000, 2.020] over the whole run): in effect a fixed T ≈ 2.01, "
        "not a learned curriculum. Compare it with --set temperature.mode=fixed temperature.fixed_value=2.01 before "
        "crediting CTKD.",
        "trial-5: its temperature hardly moved (τ in [2.000, 2.020] over the whole run): in effect a fixed T ≈ 2.01, "
        "not a learned curriculum."]


def test_verdict_with_one_seed_says_n_a():
    verdict = judge(runs_table({"trial-1": [290.0], "fallback_A": [300.0]}), Target(value=400.0))
    assert verdict.arms.set_index("arm").loc["trial-1", "ci_low"] is None or \
        math.isnan(verdict.arms.set_index("arm").loc["trial-1", "ci_low"])
    text = "\n".join(verdict.lines)
    assert "-10.00 n/a" in format_table(verdict.arms) and "CI n/a with one seed" in text
    assert "trial-1 vs fallback A: -10.00 val/ppl with one seed: the variance is unknown" in text
    assert "beats" not in text and "undecided" not in text  # no winner and no seeds-needed figure from one seed


def test_verdict_wording_clear_win_tie_clear_loss_and_drift():
    """Fallback A = [300, 302, 301] (mean 301: a 2% difference is 6.02 val/ppl); t*(95%, df 2) = 4.3027.

    trial-3     diffs −10, −11, −9: mean −10, sd 1, CI −10 ± 4.3027/√3 = [−12.48, −7.52]  → beats
    trial-7     diffs −4, +2, −1:   mean −1,  sd 3, CI [−8.45, +6.45]                      → ties; seeds for 6.02 at
                sd 3: n = 4 gives (3.1824 + 0.9785)² · (3/6.02)² = 4.30 > 4, n = 5 gives (2.7764 + 0.9410)² · 0.2483
                = 3.43 ≤ 5 → 5 in all, 2 more
    fallback_B  diffs +10, +10, +8: mean +9.33, CI [+6.46, +12.20]                         → is worse than
    learnable   diffs −1, −2, −3: CI [−4.48, +0.48], sd 1 → n = 3 ((4.3027 + 1.0607)² / 6.02² = 0.79 ≤ 3) = the
                seeds it has → a tie, and 3 seeds would have shown a 2% difference
    """
    runs = runs_table({"trial-3": [290.0, 291.0, 292.0], "trial-7": [296.0, 304.0, 300.0],
                       "fallback_A": [300.0, 302.0, 301.0], "fallback_B": [310.0, 312.0, 309.0],
                       "learnable": [299.0, 300.0, 298.0]},
                      drift={("learnable", 1), ("learnable", 2), ("learnable", 3), ("trial-7", 2)})
    verdict = judge(runs, Target(value=320.0), seeds=[1, 2, 3])
    lines = verdict.lines
    assert verdict.recommended == "trial-3"
    assert "trial-3 beats fallback A: -10.00 val/ppl, 95% CI [-12.48, -7.52] (paired by seed, 3 seeds, sd 1.00)." \
        in lines
    assert ("trial-7 ties with fallback A, within noise: -1.00 val/ppl, 95% CI [-8.45, +6.45] (paired by seed, 3 "
            "seeds, sd 3.00); undecided: 2 more seeds would resolve a 2% difference (6.02 val/ppl): 5 in all at 80% "
            "power.") in lines
    assert "fallback_B is worse than fallback A: +9.33 val/ppl, 95% CI [+6.46, +12.20] (paired by seed, 3 seeds, " \
        "sd 1.15)." in lines
    assert ("learnable ties with fallback A, within noise: -2.00 val/ppl, 95% CI [-4.48, +0.48] (paired by seed, 3 "
            "seeds, sd 1.00); a tie: 3 seeds would have resolved a 2% difference (6.02 val/ppl) with 80% power, so "
            "the true difference is likely smaller.") in lines
    assert not any(line.startswith("fallback_A ") for line in lines)  # the reference is not compared with itself
    arms = verdict.arms.set_index("arm")
    assert arms.loc["trial-7", "seeds_needed"] == 5 == seeds_needed(3.0, 6.02)
    assert arms.loc["trial-7", "paired_sd"] == pytest.approx(3.0)
    assert "5 (sd 3.00)" in format_table(verdict.arms)
    # drift: named in the verdict, and it makes a seed unstable
    assert ("learnable: temperature drift on 3/3 seeds (mean τ 2.00 → 3.00): it went more than checks.drift_share "
            "of the way from its init to a bound and was still moving that way at the end of the run, or got there."
            ) in lines
    assert any(line.startswith("trial-7: temperature drift on 1/3 seeds") for line in lines)
    assert "stable on 2/3 seeds (spike, runaway or drift)" in arms.loc["trial-7", "why"]
    assert not any("drift" in line for line in lines if line.startswith(("trial-3", "fallback")))
    # an absolute difference to resolve
    absolute = judge(runs, Target(value=320.0), seeds=[1, 2, 3], resolve=Resolve(1.0, relative=False))
    more = seeds_needed(3.0, 1.0) - 3
    assert any(f"undecided: {more} more seeds would resolve a 1 val/ppl difference:" in line for line in absolute.lines)


def test_the_outcomes_are_an_enum_whose_values_are_the_verdicts_phrases():
    from ctkd_tune.validate.verdict import Outcome

    runs = runs_table({"trial-3": [290.0, 291.0, 292.0], "trial-7": [296.0, 304.0, 300.0],
                       "fallback_A": [300.0, 302.0, 301.0], "fallback_B": [310.0, 312.0, 309.0]})
    vs_a = judge(runs, Target(value=320.0)).arms.set_index("arm")["vs_A"]
    assert [Outcome(vs_a[arm]) for arm in ("trial-3", "trial-7", "fallback_B")] == [Outcome.BEATS, Outcome.TIES,
                                                                                   Outcome.WORSE]
    assert (vs_a["trial-3"], vs_a["trial-7"], vs_a["fallback_B"]) == ("beats", "ties with", "is worse than")
    assert vs_a.isna()["fallback_A"]  # the reference is not compared with itself
    one_seed = judge(runs_table({"trial-3": [290.0], "fallback_A": [300.0]}), Target(value=320.0))
    assert Outcome(one_seed.arms.set_index("arm").loc["trial-3", "vs_A"]) is Outcome.UNKNOWN


def test_a_fallback_ahead_within_noise_ties_and_one_clearly_ahead_beats():
    """The issue's case: fallback A lower by 0.08 with the searched arm's interval [−0.12, +0.28] is a tie.

    trial-3 − A = 0, +0.08, +0.16: mean +0.08, sd 0.08, CI 0.08 ± 4.3027 · 0.08/√3 = [−0.12, +0.28].
    """
    a = [301.0, 302.0, 301.0]
    tie = judge(runs_table({"trial-3": [301.0, 302.08, 301.16], "fallback_A": a}), Target(value=400.0), seeds=[1, 2, 3])
    text = "\n".join(tie.lines)
    assert tie.recommended == "fallback_A" and tie.ctkd_passes
    assert "A fallback beats every passing searched configuration" not in text and "beats fallback A" not in text
    assert ("fallback_A has the lowest mean but does not beat every passing searched configuration: it ties within "
            "noise with trial-3 (trial-3 − fallback_A: +0.08, 95% CI [-0.12, +0.28]).") in tie.lines
    assert "trial-3 ties with fallback A, within noise: +0.08 val/ppl, 95% CI [-0.12, +0.28]" in text
    win = judge(runs_table({"trial-3": [311.0, 312.0, 310.0], "fallback_A": a}), Target(value=400.0), seeds=[1, 2, 3])
    assert "A fallback beats every passing searched configuration: fallback_A is recommended." in win.lines
    assert any(line.startswith("trial-3 is worse than fallback A: +9.67 val/ppl") for line in win.lines)


# --- real runs ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def validated(tmp_path_factory, ray_cluster):
    """A fabricated experiment validated through the CLI: top-1 trial + 4 reference arms × 2 seeds × 20 steps."""
    exp = fabricate_experiment(tmp_path_factory.mktemp("results") / "exp")
    code = main(["validate", "--experiment", str(exp), "--top-k", "1", "--seeds", "2", "--steps", str(STEPS)])
    return exp, code


def test_validate_runs_every_arm_and_seed(validated):
    exp, code = validated
    runs = pd.read_parquet(exp / "validation.parquet")
    arms = ["t00-cosine-lam0.8", "fallback_A", "fallback_B", "fallback_C", "learnable"]
    assert sorted(zip(runs["arm"], runs["seed"])) == sorted((a, s) for a in arms for s in (1, 2))
    assert (runs["status"] == "completed").all() and (runs["steps"] == STEPS).all()
    # the same fresh seeds everywhere, for the student init and the data order too
    assert (runs["train.seed"] == runs["seed"]).all() and (runs["train.data_seed"] == runs["seed"]).all()
    assert (runs["train.init_seed"] == runs["seed"]).all()
    modes = runs.drop_duplicates("arm").set_index("arm")["temperature.mode"]
    assert modes.to_dict() == {"t00-cosine-lam0.8": "ctkd", "fallback_A": "fixed", "fallback_B": "anneal",
                               "fallback_C": "ctkd", "learnable": "learnable"}
    fb_c = runs[runs["arm"] == "fallback_C"].iloc[0]
    assert (fb_c["schedule.lambda_max"], fb_c["schedule.warmup_ratio"]) == (0.5, 0.4)
    best = runs["arm"] == "t00-cosine-lam0.8"
    assert runs.loc[best, "temperature.tau_max"].eq(4.0).all()  # the best trial's knobs
    for column in ("final_val_ppl", "best_val_ppl", "checks_passed", "runaway", "spike", "wall_time_s", "tau_mid"):
        assert runs[column].notna().all(), column
    md = (exp / "validation.md").read_text()
    assert "## Verdict" in md and "fallback_A" in md and "Δ vs A" in md
    assert code == (0 if "Recommended" in md else 1)
    for arm in arms:  # the first seed's student of every arm, loadable as a Hugging Face model dir
        assert (exp / "validation" / "students" / arm / "config.json").is_file()
        assert (exp / "validation" / "students" / arm / "tokenizer.json").is_file()
    curves = pd.read_parquet(exp / "validation_curves.parquet")
    assert len(curves) == len(runs) * STEPS


def test_validate_resume_runs_only_what_is_missing(validated, capsys):
    exp, _ = validated
    from ctkd_tune.io import atomic_write_parquet
    from ctkd_tune.validate.driver import run_validation

    before = pd.read_parquet(exp / "validation.parquet")
    gone = (before["arm"] == "fallback_B") & (before["seed"] == 2)
    errored = (before["arm"] == "learnable") & (before["seed"] == 1)
    kept = before[~gone].copy()
    kept.loc[errored[~gone], "status"] = "error"  # a run that raised is re-run too
    atomic_write_parquet(exp / "validation.parquet", kept)
    with pytest.raises(ConfigError, match="already holds a validation"):
        run_validation(exp, top_k=1, seeds=2, steps=STEPS)
    with pytest.raises(ConfigError, match="--top-k 1"):
        run_validation(exp, top_k=2, resume=True)
    with pytest.raises(ConfigError, match="already has 2 seeds .* --seeds can only add seeds"):
        run_validation(exp, seeds=1, resume=True)
    capsys.readouterr()
    result = run_validation(exp, resume=True)
    assert "validating 2 runs" in capsys.readouterr().out
    after = pd.read_parquet(exp / "validation.parquet")
    assert len(after) == len(before) and result.missing == 0 and (after["status"] == "completed").all()
    untouched = before[~gone & ~errored].sort_values(["arm", "seed"]).reset_index(drop=True)
    same = after.merge(untouched[["arm", "seed"]]).sort_values(["arm", "seed"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(same[untouched.columns], untouched)  # not re-run: identical, wall time included


def test_validate_judges_stored_runs_by_todays_temperature_checks(validated, tmp_path):
    """The verdict recomputes runaway and drift from each run's stored temperatures: a run whose temperature crept
    to its bound (as if an older check had passed it) is flagged when the validation is judged again."""
    import json
    import shutil

    from ctkd_tune.search.experiment import VALIDATION_CURVES
    from ctkd_tune.io import atomic_write_parquet
    from ctkd_tune.validate.driver import run_validation

    exp = tmp_path / "exp"
    shutil.copytree(validated[0], exp)
    plan = json.loads((exp / "validation.json").read_text())
    t = next(a for a in plan["arms"] if a["arm"] == "learnable")["config"]["temperature"]
    curves = pd.read_parquet(exp / VALIDATION_CURVES)
    run = (curves["arm"] == "learnable") & (curves["seed"] == 2)
    p = curves.loc[run, "step"] / STEPS
    near = t["tau_init"] * (0.98 * t["tau_max"] / t["tau_init"]) ** (1 - (1 - p) ** 4)  # 0.98 of tau_max, barely moving
    curves.loc[run, "ctkd/temperature"] = near
    atomic_write_parquet(exp / VALIDATION_CURVES, curves)
    before = pd.read_parquet(exp / "validation.parquet")
    result = run_validation(exp, resume=True)  # nothing missing: judged again, nothing run
    after = pd.read_parquet(exp / "validation.parquet")
    flagged = (after["arm"] == "learnable") & (after["seed"] == 2)
    assert after.loc[flagged, "drift"].item() and not after.loc[flagged, "checks_passed"].item()
    assert "no_temperature_drift" in after.loc[flagged, "checks_failed"].item()
    assert after.loc[~flagged, "drift"].tolist() == before.loc[~flagged, "drift"].tolist()
    assert result.verdict.arms.set_index("arm").loc["learnable", "drift"] == 0.5  # 1 of 2 seeds


def test_validate_resume_with_more_seeds_runs_only_the_new_ones(validated, tmp_path, capsys):
    """`--resume --seeds 3` on a 2-seed validation: the plan gains seed 3, and only its 5 runs are made."""
    import shutil

    exp = shutil.copytree(validated[0], tmp_path / "exp")
    before = pd.read_parquet(exp / "validation.parquet")
    assert sorted(set(before["seed"])) == [1, 2]
    capsys.readouterr()
    code = main(["validate", "--experiment", str(exp), "--resume", "--seeds", "3", "--resolve", "5"])
    out = capsys.readouterr().out
    assert "validating 5 runs (5 arms × 3 seeds, 10 done before, 0 identical to another arm's run)" in out
    plan = json.loads((exp / "validation.json").read_text())
    assert plan["seeds"] == [1, 2, 3] and plan["resolve"] == {"value": 5.0, "relative": False}
    after = pd.read_parquet(exp / "validation.parquet")
    assert sorted(zip(after["arm"], after["seed"])) == sorted(
        [*zip(before["arm"], before["seed"]), *((arm, 3) for arm in before["arm"].unique())])
    old = after[after["seed"] < 3].sort_values(["arm", "seed"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(old[before.columns], before.sort_values(["arm", "seed"]).reset_index(drop=True))
    assert (after.loc[after["seed"] == 3, "train.seed"] == 3).all()
    assert code in (0, 1) and "3 seeds" in out and "5 val/ppl difference" in (exp / "validation.md").read_text()
    assert len(pd.read_parquet(exp / "validation_curves.parquet")) == len(after) * STEPS
    assert main(["validate", "--experiment", str(exp), "--resume", "--resolve", "2x"]) == 2
    assert "--resolve must be a positive val/ppl difference" in capsys.readouterr().err


def test_bad_experiments_are_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    no_completed = fabricate_experiment(tmp_path / "pruned", knobs=[KNOBS[3]], with_study=False)
    cases = {str(tmp_path / "missing"): "no such directory", str(empty): "no trials.parquet",
             str(no_completed): "no completed trials (1 pruned)"}
    for path, message in cases.items():
        before = sorted(p.name for p in tmp_path.rglob("*"))
        assert main(["validate", "--experiment", path, "--steps", "5"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ctkd-tune: error:") and message in err and err.count("\n") == 1
        assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    pd.DataFrame({"trial_id": [], "status": [], "final_val_ppl": []}).to_parquet(empty / "trials.parquet")
    assert main(["validate", "--experiment", str(empty)]) == 2
    assert "holds no trials" in capsys.readouterr().err
    exp = fabricate_experiment(tmp_path / "ok", with_study=False)
    for args, message in ((["--top-k", "0"], "must be >= 1"), (["--cpus-per-run", "0"], "--cpus-per-run"),
                          (["--ppl-target", "-1"], "--ppl-target must be > 0")):
        assert main(["validate", "--experiment", str(exp), *args]) == 2
        assert message in capsys.readouterr().err
    assert not (exp / "validation.json").exists()


def test_validate_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    out = capsys.readouterr().out
    for flag in ("--experiment", "--top-k", "--seeds", "--ppl-target", "--target-vs", "--resume", "--resolve",
                 "--cpus-per-run", "--steps"):
        assert flag in out


def test_an_arm_identical_to_another_runs_once(tmp_path, ray_cluster, capsys):
    """The search's best trial is fallback C's config (a known point): its runs are made once and copied."""
    from ctkd_tune.search.arms import FALLBACK_C

    knobs = [(FALLBACK_C, "completed", 240.0), *KNOBS[:1]]
    exp = fabricate_experiment(tmp_path / "twin", knobs=knobs, with_study=False)
    assert main(["validate", "--experiment", str(exp), "--top-k", "1", "--seeds", "1", "--steps", str(STEPS)]) in (0, 1)
    assert "validating 5 runs (5 arms × 1 seeds, 0 done before, 1 identical to another arm's run)" in \
        capsys.readouterr().out
    runs = pd.read_parquet(exp / "validation.parquet").set_index("arm")
    twin = "t00-fkl-cosine-tau1.0-5.0-lam0.5"  # the search's trial 0: fallback C's config
    assert runs.loc["fallback_C", "same_run_as"] == twin and runs["same_run_as"].notna().sum() == 1
    metrics = ["final_val_ppl", "best_val_ppl", "wall_time_s", "tau_mid", "status"]  # wall time: not run twice
    assert runs.loc["fallback_C", metrics].tolist() == runs.loc[twin, metrics].tolist()
    assert runs.loc["fallback_C", "kind"] == "fallback" and runs.loc[twin, "kind"] == "search"
    assert (exp / "validation" / "students" / "fallback_C" / "config.json").is_file()
    curves = pd.read_parquet(exp / "validation_curves.parquet")
    assert len(curves[curves["arm"] == "fallback_C"]) == STEPS
    # resume after losing the copy: copied again from the kept row, nothing runs
    from ctkd_tune.io import atomic_write_parquet

    atomic_write_parquet(exp / "validation.parquet", runs[runs.index != "fallback_C"].reset_index())
    assert main(["validate", "--experiment", str(exp), "--resume"]) in (0, 1)
    assert "validating 1 runs (5 arms × 1 seeds, 4 done before, 1 identical" in capsys.readouterr().out
    again = pd.read_parquet(exp / "validation.parquet").set_index("arm")
    assert again.loc["fallback_C", "wall_time_s"] == runs.loc[twin, "wall_time_s"]


def test_validate_joins_the_cluster_given_by_address_before_writing(tmp_path, monkeypatch):
    import ray

    exp = fabricate_experiment(tmp_path / "exp", with_study=False)
    asked = []

    def refuse(*args, **kwargs):
        asked.append(kwargs.get("address"))
        raise ConnectionError("connection refused")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    from ctkd_tune.validate.driver import run_validation

    with pytest.raises(ConfigError, match=r"--address ray://head:10001: cannot connect to Ray \(ConnectionError"):
        run_validation(exp, address="ray://head:10001")
    assert asked == ["ray://head:10001"]
    assert not (exp / "validation.json").exists() and not (exp / "validation.parquet").exists()


def test_fallbacks_are_forward_kl_whatever_the_search_trained(tmp_path):
    """Fallback A is forward KL at T = 2 as the plan defines it (B and C forward KL too): neither the searched
    trials' divergence nor a base config's leaks into them; the searched arms and the ablation keep their own."""
    from ctkd_tune.search.experiment import open_experiment
    from ctkd_tune.validate.driver import make_plan

    knobs = [({"temperature.tau_max": 4.0, "loss.divergence": "reverse_kl"}, "completed", 250.0),
             ({"temperature.tau_max": 6.0, "loss.divergence": "jsd", "loss.jsd_beta": 0.3}, "completed", 260.0)]
    exp = fabricate_experiment(tmp_path / "div", knobs=knobs, with_study=False)
    meta = json.loads((exp / "search.json").read_text())
    meta["base"]["loss"]["divergence"] = "skew_kl"  # a search whose base config trains skew KL
    (exp / "search.json").write_text(json.dumps(meta))
    for with_base in (True, False):  # without search.json the fallbacks start from the best trial's config
        if not with_base:
            (exp / "search.json").unlink()
        arms = {a["arm"]: a for a in make_plan(open_experiment(exp), 2, 1, None, "final", None)["arms"]}
        for name in ("fallback_A", "fallback_B", "fallback_C"):
            assert arms[name]["config"]["loss"]["divergence"] == "forward_kl", name
        assert arms["fallback_A"]["config"]["temperature"]["fixed_value"] == 2.0
        assert arms["fallback_A"]["label"] == "fixed T=2"
        assert arms["t00-rkl"]["config"]["loss"]["divergence"] == "reverse_kl"
        assert "reverse KL" in arms["t00-rkl"]["label"]
        assert arms["t01-jsd"]["config"]["loss"]["jsd_beta"] == 0.3 and "JSD β 0.3" in arms["t01-jsd"]["label"]
        assert arms["learnable"]["config"]["loss"]["divergence"] == "reverse_kl"  # the ablation of the best trial
    # trials from before loss.divergence existed read as forward KL (the field's default), not as an error
    trials = pd.read_parquet(exp / "trials.parquet").drop(columns=["loss.divergence", "loss.skew_alpha",
                                                                   "loss.jsd_beta"])
    trials.to_parquet(exp / "trials.parquet")
    arms = {a["arm"]: a for a in make_plan(open_experiment(exp), 1, 1, None, "final", None)["arms"]}
    assert arms["t00-rkl"]["config"]["loss"]["divergence"] == "forward_kl"
