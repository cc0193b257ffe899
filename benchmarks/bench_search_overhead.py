"""Overhead of one search trial under Ray against the same `distill` run without Ray (target: ≤ 5%).

    python benchmarks/bench_search_overhead.py                                   # tiny preset, 300 steps
    python benchmarks/bench_search_overhead.py --preset shakespeare --set train.steps=100

Both sides run in this process's machine, in the same invocation, with the same threads and the same config:
    bare  prepare + distill with a checkpoint at every evaluation (what `ctkd-tune distill` does), in-process
    ray   `run_search` with one trial on a one-point space (Ray already started): worker start-up, imports,
          prepare, distill, tune.report + checkpoint persistence per evaluation, Optuna and ASHA bookkeeping,
          and the result tables
Runs alternate bare, ray, bare, ray, ..., bare, so drift in machine load hits both sides; the ratio uses the
minimum of each side (the least disturbed run; medians are printed too). Ray's own start-up (`ray.init`, once
per search) is printed separately. On a busy machine, raise --repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def bare_run(cfg, threads: int) -> tuple[float, float]:
    import torch

    from ctkd_tune.run.loop import distill
    from ctkd_tune.run.prepare import prepare

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        setup = prepare(cfg)
        run = distill(cfg, lambda metrics, saved: None, setup=setup, checkpoint_dir=Path(tmp) / "checkpoint",
                      progress=False)
        return time.perf_counter() - tic, run.summary["final_val_ppl"]


def ray_run(cfg, threads: int, root: Path, index: int) -> tuple[float, float, float]:
    from ctkd_tune.search.driver import SearchSettings, run_search

    space = root / "one_point.yaml"
    space.write_text(f"schedule.type: {{type: categorical, choices: [{cfg.schedule.type}]}}\n")  # = the base config
    tic = time.perf_counter()
    result = run_search(cfg, SearchSettings(space=str(space), name=f"overhead{index}", num_samples=1,
                                            results_root=root, cpus_per_trial=threads, points=[], verbose=0))
    total = time.perf_counter() - tic
    row = result.trials.iloc[0]
    assert row["status"] == "completed", row["stop_reason"]
    return total, float(row["wall_time_s"]), float(row["final_val_ppl"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="CPUs of the trial")
    parser.add_argument("--repeats", type=int, default=2, help="Ray trials (bare runs: repeats + 1)")
    args = parser.parse_args()
    overrides = args.overrides or (["train.steps=300", "train.eval_every=50"] if args.preset == "tiny" else [])

    import ray

    from ctkd_tune.config import load_config
    from ctkd_tune.run.prepare import prepare

    # the seeds a search fixes, so both sides run exactly the same distillation
    cfg = load_config(preset=args.preset, overrides=["train.data_seed=0", "train.init_seed=0", *overrides])
    prepare(cfg)  # build/cached teacher, tokens: neither side pays for them
    first, ppl = bare_run(cfg, args.threads)
    bare, ray_totals, inner, ppls = [first], [], [], [ppl]
    tic = time.perf_counter()
    ray.init(num_cpus=args.threads, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray_init = time.perf_counter() - tic
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for i in range(args.repeats):
                total, trial, ppl = ray_run(cfg, args.threads, Path(tmp), i)
                ray_totals.append(total)
                inner.append(trial)
                ppls.append(ppl)
                seconds, ppl = bare_run(cfg, args.threads)
                bare.append(seconds)
                ppls.append(ppl)
        finally:
            ray.shutdown()
    ratio = min(ray_totals) / min(bare)
    print(f"config: preset {args.preset} {' '.join(overrides)}; {cfg.train.steps} steps, {args.threads} threads")
    print(f"bare distill (prepare + run + checkpoints): {', '.join(f'{b:.2f}' for b in bare)} s")
    print(f"one trial under Ray (run_search, end to end): {', '.join(f'{t:.2f}' for t in ray_totals)} s"
          f"  (inside the trainable: {', '.join(f'{t:.2f}' for t in inner)} s)")
    print(f"ray.init (once per search): {ray_init:.2f} s")
    print(f"final val/ppl of every run (same distillation on both sides): {', '.join(f'{p:.3f}' for p in ppls)}")
    print(f"median ratio ray / bare = {statistics.median(ray_totals) / statistics.median(bare):.3f}")
    print(f"ratio ray / bare = {ratio:.3f}  (overhead {100 * (ratio - 1):+.1f}%; target ≤ +5%)")


if __name__ == "__main__":
    sys.exit(main())
