"""`ctkd-tune validate`: re-run the search's best configurations with several seeds, next to the fallbacks.

    ctkd-tune validate --experiment results/ctkd-search                      # top 3 × 3 seeds + 4 reference arms
    ctkd-tune validate --experiment results/ctkd-search --target-vs fixed    # must beat fallback A, not a number
    ctkd-tune validate --experiment results/ctkd-search --resume             # after an interruption
    ctkd-tune validate --experiment results/ctkd-search --resume --seeds 8   # add seeds: only the new runs
    ctkd-tune validate --experiment results/ctkd-search --resume --resolve 1%   # judge again, seeds for a 1% gap

Arms: the top-K completed trials (by final or best val/ppl), fallback A (fixed T = 2.0), fallback B (anneal
4.0 → 1.5), fallback C (ctkd, λ_max 0.5, warmup 0.4) — the fallbacks on the search's base config — and the
`learnable` ablation (the best trial with plain minimisation instead of the GRL). Every arm runs the same seeds,
fresh ones (the search's seed + 1, + 2, ...: the top-K were selected on the search's seed, re-using it would
favour them), with train.seed = data_seed = init_seed = seed. Each run is one `distill` in a Ray task
(`runs.execute`); the verdict is `verdict.judge`, a pure function of the runs table.

Written to results/NAME/ (atomically, after every finished run, so an interruption loses nothing finished):
    validation.json            the plan (arms, their configs, seeds, steps, target): what --resume continues
    validation.parquet         one row per run: arm, seed, config columns, final/best val/ppl, status, checks, ...
    validation_curves.parquet  one row per step per run: temperature, λ, val/ppl (for `ctkd-tune report`)
    validation/students/ARM/   the student of each arm's first seed (Hugging Face format, with the tokenizer)
    validation.md              the side-by-side table and the verdict (`ctkd_tune.validate.verdict`)
`--resume` runs only the (arm, seed) pairs without a row; runs that raised (status error) are re-run. With
`--seeds K` (K ≥ the planned count) it first extends the plan to K seeds, continuing the sequence. `--resolve`
(2% of fallback A's mean by default, or an absolute val/ppl) sizes the seeds-needed figure of the verdict.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctkd_tune.search.arms import FALLBACKS, REFERENCE_ARM
from ctkd_tune.config import Config, ConfigError, apply_overrides, from_dict
from ctkd_tune.search.experiment import VALIDATION, VALIDATION_PLAN, Experiment, open_experiment, read_rows
from ctkd_tune.search.lock import experiment_lock
from ctkd_tune.io import atomic_write_json, atomic_write_parquet, atomic_write_text
from ctkd_tune.validate.runs import execute, finished, rejudge_temperatures
from ctkd_tune.validate.verdict import ArmKind, Resolve, ValidationStatus, Target, Verdict, judge_plan
from ctkd_tune.validate.table import format_table


@dataclass
class ValidationResult:
    directory: Path
    runs: Any  # DataFrame of validation.parquet
    verdict: Verdict
    missing: int  # planned runs without a row (0 when complete)


def run_validation(experiment: str | Path, *, top_k: int | None = None, seeds: int | None = None,
                   steps: int | None = None, rank_by: str | None = None, ppl_target: float | None = None,
                   target_vs: str | None = None, resume: bool = False, cpus_per_run: float = 1.0,
                   gpus_per_run: float = 0.0, address: str | None = None,
                   resolve: str | None = None) -> ValidationResult:
    """Plan (or continue) the validation of `experiment`, run what is missing on Ray, judge, write, print."""
    exp = open_experiment(experiment)
    # one driver per experiment: a validation never runs beside its search or another validation
    with experiment_lock(exp.directory, "validate"):
        if cpus_per_run <= 0 or gpus_per_run < 0:
            raise ConfigError(f"--cpus-per-run must be > 0, got {cpus_per_run}")
        plan_path, table_path = exp.directory / VALIDATION_PLAN, exp.directory / VALIDATION
        target, difference = _target(ppl_target, target_vs), None if resolve is None else parse_resolve(resolve)
        if resume:
            plan = exp.plan()
            if plan is None:
                raise ConfigError(f"--resume: no validation to continue in {exp.directory}")
            given = {"top_k": top_k, "steps": steps, "rank_by": rank_by}
            for key, value in given.items():
                if value is not None and value != plan[key]:
                    flag = f"--{key.replace('_', '-')}"
                    raise ConfigError(f"--resume continues the validation planned with {flag} {plan[key]}; "
                                      f"drop {flag} {value} (or delete {VALIDATION_PLAN})")
            if seeds is not None:
                plan["seeds"] = more_seeds(plan["seeds"], seeds)
            if target is not None:
                plan["target"] = target.__dict__
            if difference is not None:
                plan["resolve"] = difference.__dict__
        else:
            if plan_path.exists() or table_path.exists():
                raise ConfigError(f"{exp.directory} already holds a validation: continue it with --resume, or delete "
                                  f"{VALIDATION_PLAN} and {VALIDATION}")
            plan = make_plan(exp, 3 if top_k is None else top_k, 3 if seeds is None else seeds, steps,
                             rank_by or "final", target)
            plan["resolve"] = (difference or Resolve()).__dict__
        rows, curves = finished(exp.directory, plan) if resume else ([], [])
        done = {(r["arm"], r["seed"]) for r in rows}
        # seed-major order: an interrupted validation leaves whole seeds, i.e. pairs comparable across arms
        todo = [(arm, seed) for seed in plan["seeds"] for arm in plan["arms"] if (arm["arm"], seed) not in done]
        if todo:
            # writes the plan first
            execute(exp.directory, plan, todo, rows, curves, cpus_per_run, gpus_per_run, address)
        else:
            atomic_write_json(plan_path, plan)
        return finish(exp.directory, plan)


def make_plan(exp: Experiment, top_k: int, n_seeds: int, steps: int | None, rank_by: str,
              target: Target | None) -> dict[str, Any]:
    """The arms and their configs: the top-K completed trials, the fallbacks and the ablation (validated)."""
    if top_k < 1 or n_seeds < 1 or (steps is not None and steps < 1):
        raise ConfigError("--top-k, --seeds and --steps must be >= 1")
    if rank_by not in ("final", "best"):
        raise ConfigError(f"--rank-by must be final or best, got {rank_by!r}")
    column = f"{rank_by}_val_ppl"
    trials = {r["trial_id"]: r for r in read_rows(exp.directory / "trials.parquet")}
    ranked = exp.completed.sort_values([column, "trial_id"], kind="stable", na_position="last").head(top_k)
    top = [trials[t] for t in ranked["trial_id"]]
    from ctkd_tune.search.results import config_from_row, display_name

    best_cfg = config_from_row(top[0])
    base = _search_base(exp) or best_cfg.to_dict()
    arms = []
    for rank, row in enumerate(top, start=1):
        name = display_name(row)  # the trial's name in the search's tables and live table
        cfg = config_from_row(row)
        arms.append(_arm(name, ArmKind.SEARCH, f"search rank {rank}: {describe(cfg)}", cfg.to_dict(), rank,
                         trial_id=row["trial_id"], optuna_trial=row.get("optuna_trial"), search_val_ppl=row[column]))
    for order, (name, (kind, overrides)) in enumerate(FALLBACKS.items(), start=len(arms) + 1):
        cfg = from_dict(apply_overrides(base, overrides))
        arms.append(_arm(name, kind, describe(cfg), cfg.to_dict(), order))
    ablation = from_dict(apply_overrides(best_cfg.to_dict(), {"temperature.mode": "learnable"}))
    arms.append(_arm("learnable", ArmKind.ABLATION, f"{describe(ablation)} (ablation of {arms[0]['arm']})",
                     ablation.to_dict(), len(arms) + 1))
    for arm in arms[:len(top)]:  # the search's known points are often fallback C: say so, run both anyway
        same = [a["arm"] for a in arms[len(top):-1] if a["config"] == arm["config"]]
        arm["label"] += f" (same config as {same[0]})" if same else ""
    if steps is not None:
        for arm in arms:
            arm["config"]["train"]["steps"] = steps
            from_dict(arm["config"])  # still valid
    first_seed = best_cfg.train.seed + 1
    target = target or Target(value=best_cfg.checks.ppl_target)
    return {"experiment": exp.name, "top_k": top_k, "rank_by": rank_by, "steps": steps,
            "seeds": list(range(first_seed, first_seed + n_seeds)), "target": target.__dict__, "arms": arms}


def more_seeds(planned: list[int], count: int) -> list[int]:
    """The plan's seeds extended to `count`, continuing after the last (`--resume --seeds K`); never fewer."""
    if count < len(planned):
        raise ConfigError(f"--resume --seeds {count}: the validation already has {len(planned)} seeds "
                          f"({planned}); --seeds can only add seeds")
    return planned + list(range(max(planned) + 1, max(planned) + 1 + count - len(planned)))


def parse_resolve(text: str) -> Resolve:
    """`--resolve`: "2%" (of fallback A's mean val/ppl) or "5" (val/ppl), > 0 (a share below 100%)."""
    text = text.strip()
    relative = text.endswith("%")
    try:
        value = float(text[:-1] if relative else text)
    except ValueError:
        value = math.nan
    if not 0 < value < (100 if relative else math.inf):
        raise ConfigError(f"--resolve must be a positive val/ppl difference (5) or a share of fallback A's mean "
                          f"below 100% (2%), got {text!r}")
    return Resolve(value, relative)


def describe(cfg: Config) -> str:
    """A short human label of a configuration's temperature recipe."""
    t, s, lo = cfg.temperature, cfg.schedule, cfg.loss
    divergence = {"forward_kl": "", "reverse_kl": ", reverse KL", "skew_kl": f", skew KL α {lo.skew_alpha:.2g}",
                  "jsd": f", JSD β {lo.jsd_beta:.2g}"}[lo.divergence]
    if t.mode == "fixed":
        return f"fixed T={t.fixed_value:g}{divergence}"
    if t.mode == "anneal":
        return f"anneal T {t.anneal_start:g}→{t.anneal_end:g}{divergence}"
    text = f"{t.mode} τ∈[{t.tau_min:.3g}, {t.tau_max:.3g}] init {t.tau_init:.3g}, {t.granularity}"
    if t.mode == "ctkd":
        gamma = f" γ {s.gamma:.3g}" if s.type == "exp" else ""
        text += f", λ_max {s.lambda_max:.3g}, warmup {s.warmup_ratio:.2g}, {s.type}{gamma}"
    return text + divergence


def finish(directory: Path, plan: dict[str, Any]) -> ValidationResult:
    """Judge validation.parquet, write validation.md, print the table and the verdict."""
    import pandas as pd

    runs = pd.read_parquet(directory / VALIDATION) if (directory / VALIDATION).is_file() else pd.DataFrame()
    if not len(runs):
        raise ConfigError(f"{directory / VALIDATION}: no validation runs")
    rejudged = rejudge_temperatures(directory, plan, runs)
    columns = ["runaway", "drift", "checks_passed", "checks_failed"]
    if not rejudged[columns].astype(str).equals(runs.reindex(columns=columns).astype(str)):
        atomic_write_parquet(directory / VALIDATION, rejudged)  # report and export read the same flags
    runs = rejudged
    verdict = judge_plan(runs, plan)
    ran = {(a, s) for a, s, status in zip(runs["arm"], runs["seed"], runs["status"])
           if status != ValidationStatus.ERROR}
    missing = len({(a["arm"], s) for a in plan["arms"] for s in plan["seeds"]} - ran)
    table = format_table(verdict.arms)
    atomic_write_text(directory / "validation.md", validation_markdown(plan, verdict, runs, missing))
    print(table + "\n\n" + "\n".join(verdict.lines))
    if missing > 0:
        print(f"ctkd-tune: {missing} runs missing or errored; continue with: "
              f"ctkd-tune validate --experiment {directory} --resume")
    print(f"validation: {directory / VALIDATION}, {directory / 'validation.md'}")
    return ValidationResult(directory, runs, verdict, missing)


def validation_markdown(plan: dict[str, Any], verdict: Verdict, runs, missing: int) -> str:
    steps = int(runs["steps"].max()) if "steps" in runs and runs["steps"].notna().any() else plan["steps"]
    lines = [f"# Validation of `{plan['experiment']}`", "",
             f"{len(plan['arms'])} arms × seeds {plan['seeds']}, {steps} steps per run, "
             f"{len(runs)} runs" + (f" (**{missing} missing**: `ctkd-tune validate --resume`)" if missing else ""),
             "", format_table(verdict.arms, markdown=True), "", "## Verdict", ""]
    lines += [f"- {line}" for line in verdict.lines]
    lines += ["", "## How to read it", "",
              "- *final val/ppl*: mean ± standard deviation over the seeds that completed.",
              "- *Δ vs A*: mean per-seed difference to fallback A (negative = better), with a 95% t-interval on "
              "the paired differences (n/a with one seed). An arm *beats* fallback A only when the interval lies "
              "below 0; when it holds 0 the two tie, within noise.",
              f"- *seeds needed*: seeds (pairs) that would resolve a {Resolve(**plan.get('resolve', {})).describe()} "
              "difference at 95% confidence and 80% power, from the paired sd of the differences; "
              "`ctkd-tune validate --resume --seeds K` adds seeds.",
              "- *checks*: seeds passing every sanity check at 10%, 33%, 100% (except the final ppl, judged by "
              "the target); *stable*: seeds with no val/ppl spike, no temperature runaway (stuck at a bound) and "
              "no drift (moved more than checks.drift_share of its log range towards a bound, still moving over "
              "the last quarter).",
              "- *τ*: mean temperature at the first step, mid-run and the end, and its extremes over all seeds.",
              "", "## Arms", ""]
    lines += [f"- `{a['arm']}` ({a['kind']}): {a['label']}" +
              (f" — trial `{a['trial_id']}`" if a.get("trial_id") else "") for a in plan["arms"]]
    return "\n".join(lines) + "\n"


def _arm(name: str, kind: str, label: str, config: dict, order: int, **extra) -> dict[str, Any]:
    return {"arm": name, "kind": kind, "label": label, "order": order, **extra, "config": config}


def _target(ppl_target: float | None, target_vs: str | None) -> Target | None:
    if ppl_target is not None and target_vs is not None:
        raise ConfigError("give --ppl-target or --target-vs, not both")
    if ppl_target is not None:
        if not ppl_target > 0:
            raise ConfigError(f"--ppl-target must be > 0, got {ppl_target}")
        return Target(value=float(ppl_target))
    if target_vs is not None:
        if target_vs != "fixed":
            raise ConfigError(f"--target-vs must be 'fixed' (fallback A), got {target_vs!r}")
        return Target(vs=REFERENCE_ARM)
    return None


def _search_base(exp: Experiment) -> dict[str, Any] | None:
    """The search's base config (search.json), so the fallbacks inherit no searched value."""
    try:
        return from_dict(json.loads((exp.directory / "search.json").read_text())["base"]).to_dict()
    except (OSError, ValueError, KeyError, TypeError):
        return None
