"""Profile one default-search trial: where its wall time goes, phase by phase, outside and inside the training steps.

    python benchmarks/profile_trial.py           # the default search's first trial (shakespeare, 150 steps)
    python benchmarks/profile_trial.py --preset tiny --set train.steps=60 --repeats 2

One trial as `trainables/distill_trainable.py` runs it, without Ray: `prepare` then `distill` with a checkpoint at
every evaluation and a reporter that builds the trial's report row. The teacher's hidden states are stored first,
as the search driver does once per search (not counted). Ray's own per-trial cost (~5 s: worker start, the
checkpoint upload in `tune.report`) is measured by `bench_search_overhead.py`; here the upload is stood in for by
copying the checkpoint folder (`--upload`, on by default), which is what Ray's local storage does.
Phases are timed by wrapping the loop's own functions (their results are untouched); each repeat runs in a fresh
process, so imports and first-call costs are counted as a trial pays them. Printed: seconds per phase (median of
the repeats) and its share of the trial, and the final val/ppl (it must not change when a phase is cut).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the heavy imports: they are part of a trial's start-up

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

PHASES = [
    ("imports", "python, torch, transformers, ctkd_tune"),
    ("prepare: teacher", "load the cached teacher and tokenizer"),
    ("prepare: tokens", "load the cached token stream, split it"),
    ("prepare: student", "build the student"),
    ("prepare: other", "path checks, vocabulary checks"),
    ("open teacher outputs", "find the stored hidden states (hashes teacher and tokens)"),
    ("steps: forward + loss", "`Step.loss`: teacher head on stored states, student, τ, KD + CE"),
    ("steps: rest", "backward, clip, optimiser steps, metrics row"),
    ("evaluation: teacher", "teacher forward on held-out batches (first evaluation; kept after)"),
    ("evaluation: student", "student forward, CE, KL, agreement on the held-out batches"),
    ("checkpoint", "`save_checkpoint` (state dicts, history, RNG → state.pt)"),
    ("checkpoint upload", "copy of the checkpoint folder, standing in for Ray's upload in tune.report"),
    ("report", "the trial's report row"),
    ("summary", "`summarize`: checks, final metrics"),
    ("other", "`distill`'s set-up before the first step: temperature, optimisers, held-out batches"),
]


class Timer:
    """Accumulates wall and CPU seconds per phase; `wrap` times every call of a function under a phase name."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    def wrap(self, phase: str, fn):
        def timed(*args, **kwargs):
            tic, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - tic
                self.cpu[phase] += time.process_time() - cpu
        return timed


def profile_once(args) -> dict:
    """One trial in this (fresh) process; returns {phase: seconds} plus the total and the final val/ppl."""
    import importlib

    import torch

    timer = Timer()
    loop = importlib.import_module("ctkd_tune.run.loop")  # the module (the package exports a function of that name)
    preparation = importlib.import_module("ctkd_tune.run.prepare")
    from ctkd_tune.config import load_config
    from ctkd_tune.search.spaces import trial_config

    torch.set_num_threads(args.threads)
    timer.seconds["imports"], timer.cpu["imports"] = time.perf_counter() - STARTED, time.process_time()
    cfg = load_config(preset=args.preset, overrides=args.overrides)
    cfg = trial_config(cfg.to_dict(), {})  # as the trainable builds it (the first known point: the defaults)

    # prepare, by part
    for name, phase in (("load_teacher", "prepare: teacher"), ("load_tokenizer", "prepare: teacher"),
                        ("load_data", "prepare: tokens"), ("load_tokens", "prepare: tokens"),
                        ("split_tokens", "prepare: tokens"), ("load_student", "prepare: student")):
        if hasattr(preparation, name):  # the loaders `prepare` calls (their names follow preparation.py)
            setattr(preparation, name, timer.wrap(phase, getattr(preparation, name)))
    tic, cpu = time.perf_counter(), time.process_time()
    setup = preparation.prepare(cfg)
    for s, spent in ((timer.seconds, time.perf_counter() - tic), (timer.cpu, time.process_time() - cpu)):
        s["prepare: other"] = spent - sum(s[p] for p in ("prepare: teacher", "prepare: tokens", "prepare: student"))

    # distill, by part
    open_outputs = loop.TeacherSource.open
    loop.TeacherSource.open = timer.wrap("open teacher outputs", open_outputs)
    held_out = loop.TeacherSource.held_out
    loop.TeacherSource.held_out = timer.wrap("evaluation: teacher", held_out)
    for path in (loop.LogitsStep, loop.FusedStep):  # the logits path and the fused one: whichever the run takes
        path.loss = timer.wrap("steps: forward + loss", path.loss)
        path.evaluate = timer.wrap("evaluation: all", path.evaluate)
    loop.save_checkpoint = timer.wrap("checkpoint", loop.save_checkpoint)
    loop.summarize = timer.wrap("summary", loop.summarize)
    progress = importlib.import_module("ctkd_tune.run.progress")  # where distill's progress bar is built
    marks, progress_bar = {}, progress.tqdm

    def mark_loop_start(*a, **k):  # distill builds its progress bar right before the first step
        marks.update(wall=time.perf_counter(), cpu=time.process_time(),  # evaluations before step 1 (reference
                     eval_wall=timer.seconds["evaluation: all"], eval_cpu=timer.cpu["evaluation: all"])  # points)
        return progress_bar(*a, **k)

    progress.tqdm = mark_loop_start
    work = Path(tempfile.mkdtemp(prefix="profile-trial-"))
    uploads = [0]

    def upload(saved: Path) -> None:
        uploads[0] += 1
        shutil.copytree(saved, work / "storage" / f"checkpoint_{uploads[0]:06d}")

    def report(metrics, saved):
        if "val/ppl" not in metrics:
            return
        row = {key: metrics[key] for key in ("val/ppl", "val/kl", "val/loss", "train/loss", "ctkd/temperature",
                                             "ctkd/lambda") if key in metrics}
        row.update(step=metrics["step"], reported_at=time.time())
        if saved is not None and args.upload:
            timer.wrap("checkpoint upload", upload)(saved)
        json.dumps(row)

    try:
        starts = {"wall": time.perf_counter(), "cpu": time.process_time()}
        result = loop.distill(cfg, timer.wrap("report", report), setup=setup, checkpoint_dir=work / "checkpoint",
                              progress=False)
        ends = {"wall": time.perf_counter(), "cpu": time.process_time()}
    finally:
        loop.TeacherSource.open, loop.TeacherSource.held_out = open_outputs, held_out
        shutil.rmtree(work, ignore_errors=True)
    for s, now, clock in ((timer.seconds, time.perf_counter(), "wall"), (timer.cpu, time.process_time(), "cpu")):
        s["evaluation: student"] = s.pop("evaluation: all") - s["evaluation: teacher"]
        s["report"] -= s["checkpoint upload"]  # the upload runs inside the reporter, as it does in tune.report
        before = marks[f"eval_{clock}"]  # evaluation time spent before step 1 is evaluation, not set-up
        s["other"] = marks[clock] - starts[clock] - s["open teacher outputs"] - before  # set-up before step 1
        s["steps: rest"] = before  # cancels below: the pre-loop evaluation is in the evaluation phases already
        s["steps: rest"] += ends[clock] - marks[clock] - sum(s[p] for p in (
            "steps: forward + loss", "evaluation: teacher", "evaluation: student", "checkpoint",
            "checkpoint upload", "report", "summary"))
        s["total"] = now - (STARTED if clock == "wall" else 0.0)
    return {"seconds": dict(timer.seconds), "cpu_seconds": dict(timer.cpu), "steps": len(result.history),
            "final_val_ppl": result.summary["final_val_ppl"],
            "evaluations": sum("val/ppl" in row for row in result.history), "threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shakespeare")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--upload", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", help="also write the per-repeat results to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.overrides and args.preset == "shakespeare":
        from ctkd_tune.search.driver import DEFAULT_BUDGET

        args.overrides = [f"{k}={v}" for k, v in DEFAULT_BUDGET.items()]
    if args.worker:
        print("RESULT " + json.dumps(profile_once(args)), flush=True)
        return 0

    _store_teacher_states(args)
    runs = []
    for _ in range(args.repeats):
        cmd = [sys.executable, __file__, "--worker", "--preset", args.preset, "--threads", str(args.threads),
               *[f"--set={o}" for o in args.overrides], "--upload" if args.upload else "--no-upload"]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"the profiled trial failed:\n{proc.stderr[-3000:]}")
        runs.append(json.loads(lines[-1][len("RESULT "):]))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    names = [p for p, _ in PHASES] + ["total"]
    med = {k: {phase: statistics.median(r[k].get(phase, 0.0) for r in runs) for phase in names}
           for k in ("seconds", "cpu_seconds")}
    wall, cpu = med["seconds"], med["cpu_seconds"]
    print(f"one trial: preset {args.preset} {' '.join(args.overrides)}; {runs[0]['steps']} steps, "
          f"{runs[0]['evaluations']} evaluations, {runs[0]['threads']} thread(s); median of {len(runs)} run(s); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"  {'phase':24s} {'wall':>9s} {'share':>6s} {'CPU':>9s} {'share':>6s}")
    for phase, what in PHASES:
        print(f"  {phase:24s} {wall[phase]:8.2f}s {100 * wall[phase] / wall['total']:5.1f}% "
              f"{cpu[phase]:8.2f}s {100 * cpu[phase] / cpu['total']:5.1f}%   {what}")
    print(f"  {'total':24s} {wall['total']:8.2f}s        {cpu['total']:8.2f}s")
    for name, m in (("wall", wall), ("CPU", cpu)):
        steps = m["steps: forward + loss"] + m["steps: rest"]
        print(f"  {name}: training steps {steps:.2f} s ({100 * steps / m['total']:.1f}%), outside them "
              f"{m['total'] - steps:.2f} s ({100 * (m['total'] - steps) / m['total']:.1f}%)")
    ppls = ", ".join(f"{r['final_val_ppl']:.4f}" for r in runs)
    print(f"final val/ppl: {ppls}")
    return 0


def _store_teacher_states(args) -> None:
    from ctkd_tune.run import teacher_states
    from ctkd_tune.config import load_config
    from ctkd_tune.run.prepare import prepare

    cfg = load_config(preset=args.preset, overrides=args.overrides)
    setup = prepare(cfg)
    teacher_states.build(cfg, setup.teacher, setup.data, log=lambda msg: None)


if __name__ == "__main__":
    sys.exit(main())
