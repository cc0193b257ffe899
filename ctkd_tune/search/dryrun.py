"""`ctkd-tune search --dry-run`: what a search would run and about how long it takes, without starting it.

    ctkd-tune search --preset tiny --num-samples 4 --dry-run

Prints the resolved base config (YAML), the searched parameters and the known points, the budget (trials, steps,
evaluations, trials at once) and an estimated wall time from a few timed training steps and one evaluation of the
base config. The estimate is an upper bound: every trial counted to its last step (early stopping only shortens
the search), trials in waves of `concurrent`. Neither Ray nor the study is touched; nothing is written, except
that the embedded teacher is not pre-trained for the timing (run `ctkd-tune teacher` first to get an estimate).
"""

from __future__ import annotations

import math
import os
import textwrap
import time
from dataclasses import dataclass

from ctkd_tune.config import Config, dump_yaml, from_dict
from ctkd_tune.search.status import duration

TIMED_STEPS = 4


@dataclass
class Estimate:
    """Seconds per training step and per evaluation, measured on this machine with the base config."""
    step_s: float
    eval_s: float


def plan_text(cfg: Config, space: str | None, num_samples: int, concurrent: int,
              estimate: Estimate | None, why_no_estimate: str = "") -> str:
    """The dry run's report (pure: the timing is measured by `time_steps`)."""
    from ctkd_tune.run.loop import evaluation_steps
    from ctkd_tune.search.spaces import check_space, load_space

    info = check_space(load_space(space), cfg, space or "default")
    evals = len(evaluation_steps(cfg))
    lines = [dump_yaml(cfg, header="base config of the search (resolved)").rstrip(), "",
             textwrap.fill(f"space: {space or 'default'}: {', '.join(info.params)}", 100, subsequent_indent="  "),
             f"known points evaluated first: {len(info.points)}",
             f"budget: {num_samples} trials × {cfg.train.steps} steps, {evals} evaluations each, "
             f"{concurrent} at once"]
    if estimate is None:
        lines.append(f"estimate: none ({why_no_estimate})")
    else:
        trial_s = cfg.train.steps * estimate.step_s + evals * estimate.eval_s
        total_s = math.ceil(num_samples / concurrent) * trial_s
        lines.append(f"estimate: {estimate.step_s:.2f} s/step, {estimate.eval_s:.2f} s/evaluation → "
                     f"{duration(trial_s)} per trial, ≤ {duration(total_s)} for the search")
        lines.append("  (an upper bound: early stopping shortens it; measured on this machine as loaded now)")
    lines.append("nothing was started; run the same command without --dry-run")
    return "\n".join(lines)


def time_steps(cfg: Config, steps: int = TIMED_STEPS) -> Estimate:
    """Run `steps` training steps and their evaluations of `cfg` on one core's share; time both (no files)."""
    from ctkd_tune.run.loop import distill, evaluation_steps
    from ctkd_tune.run.prepare import prepare

    data = cfg.to_dict()
    data["train"].update(steps=steps, eval_every=steps, lr_warmup_ratio=0.0)
    short = from_dict(data)
    setup = prepare(short)  # loading models and data is not part of a step
    step_times: list[float] = []
    started = time.perf_counter()

    def report(metrics, saved) -> None:
        tps = metrics.get("train/tokens_per_s")
        if tps:
            step_times.append(short.train.batch_size * short.data.block_size / tps)

    distill(short, report, setup=setup, progress=False)
    wall = time.perf_counter() - started
    step_s = sorted(step_times)[len(step_times) // 2] if step_times else wall / steps
    evals = max(1, len(evaluation_steps(short)))
    return Estimate(step_s, max(0.0, wall - sum(step_times)) / evals)


def teacher_missing(cfg: Config) -> str:
    """Why the timing cannot run without pre-training a teacher first ('' when it can)."""
    teacher = cfg.model.teacher
    if teacher.startswith("builtin:"):
        from ctkd_tune.inputs.cache import cache_dir

        name = teacher.split(":", 1)[1]
        if not (cache_dir() / "teachers" / name / "teacher.json").is_file():
            return f"the embedded teacher {name!r} is not built yet: run `ctkd-tune teacher --name {name}` first"
    return ""


def default_concurrency(cpus_per_trial: float, max_concurrent: int | None) -> int:
    return max_concurrent or max(1, int((os.cpu_count() or 1) // cpus_per_trial))
