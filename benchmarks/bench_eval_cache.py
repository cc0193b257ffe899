"""Wall time of a distillation run with the teacher's held-out logits kept after the first evaluation
(`train.eval_cache_mb`, default) against recomputing them at every evaluation (`train.eval_cache_mb=0`).

    python benchmarks/bench_eval_cache.py                     # the default search trial: shakespeare, 150 steps
    python benchmarks/bench_eval_cache.py --set train.steps=60 --repeats 1

Both sides run the same config in this process, alternating (plain, cached, plain, cached, ...), with the same
threads; the ratio uses the minimum of each side. The final metrics must be identical: the cache changes no number.
"""

from __future__ import annotations

import argparse
import sys
import time


def one_run(cfg) -> tuple[float, float]:
    from ctkd_tune.distill import distill, prepare

    setup = prepare(cfg)  # a fresh student (distill trains it in place); teacher and tokens come from the cache
    tic = time.perf_counter()
    result = distill(cfg, lambda metrics, saved: None, setup=setup, progress=False)
    return time.perf_counter() - tic, result.summary["final_val_ppl"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shakespeare")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    overrides = args.overrides or ["train.steps=150", "train.eval_every=25"]  # the default search budget

    import torch

    from ctkd_tune.config import load_config
    from ctkd_tune.distill import evaluation_steps, prepare

    torch.set_num_threads(args.threads)
    configs = {mb: load_config(preset=args.preset, overrides=[*overrides, f"train.eval_cache_mb={mb}"])
               for mb in (0, load_config(preset=args.preset).train.eval_cache_mb)}
    prepare(configs[0])  # builds the teacher and the token cache once, outside any timing
    times: dict[float, list[float]] = {mb: [] for mb in configs}
    ppls = set()
    for _ in range(args.repeats):
        for mb, cfg in configs.items():
            seconds, ppl = one_run(cfg)
            times[mb].append(seconds)
            ppls.add(ppl)
    plain, cached = (min(times[mb]) for mb in configs)
    cfg = configs[0]
    print(f"config: preset {args.preset} {' '.join(overrides)}; {len(evaluation_steps(cfg))} evaluations of "
          f"{cfg.train.eval_batches} batches; {args.threads} threads")
    for mb, runs in times.items():
        print(f"train.eval_cache_mb={mb:g}: {', '.join(f'{t:.1f}' for t in runs)} s")
    print(f"final val/ppl of every run: {', '.join(f'{p:.4f}' for p in sorted(ppls))} (must be one value)")
    print(f"ratio cached / recomputed = {cached / plain:.3f}")
    return 0 if len(ppls) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
