"""Wall time of one search trial when the teacher's outputs are reused, against recomputing them every time.

    python benchmarks/bench_teacher_reuse.py                  # the default search trial: shakespeare, 150 steps
    python benchmarks/bench_teacher_reuse.py --preset tiny --set train.steps=60 --repeats 1

Three ways to run the same distillation, alternating (so drift in machine load hits all three), same threads:
    recomputed    train.eval_cache_mb=0 train.teacher_cache_mb=0: the teacher's full forward at every step and
                  on every held-out batch at every evaluation
    eval kept     train.teacher_cache_mb=0: the held-out logits are kept after the first evaluation
    both          the defaults: also the teacher's last hidden states on the training batches, stored once
                  beforehand (`teacher_states.build`, as the search driver does) — only the LM head runs per step
The ratios use the minimum of each arm. Storing the hidden states is a one-time cost per search (all trials share
the batches); it is printed separately. The final val/ppl must be the same in every run.
"""

from __future__ import annotations

import argparse
import sys
import time

ARMS = {"recomputed": ["train.eval_cache_mb=0", "train.teacher_cache_mb=0"],
        "eval kept": ["train.teacher_cache_mb=0"], "both": []}


def one_run(cfg) -> tuple[float, float]:
    from ctkd_tune.run.loop import distill
    from ctkd_tune.run.prepare import prepare

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

    from ctkd_tune.run import teacher_states
    from ctkd_tune.config import load_config
    from ctkd_tune.run.loop import evaluation_steps
    from ctkd_tune.run.prepare import prepare

    torch.set_num_threads(args.threads)
    configs = {arm: load_config(preset=args.preset, overrides=[*overrides, *extra]) for arm, extra in ARMS.items()}
    setup = prepare(configs["both"])  # builds the teacher and the token cache once, outside any timing
    existed = teacher_states.StoredStates.open(configs["both"], setup.teacher, setup.data) is not None
    tic = time.perf_counter()
    stored = teacher_states.build(configs["both"], setup.teacher, setup.data)
    store_s = time.perf_counter() - tic
    if stored is None:
        print("the teacher's outputs could not be stored for this config: 'both' = 'eval kept'")
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    ppls = set()
    for _ in range(args.repeats):
        for arm, cfg in configs.items():
            seconds, ppl = one_run(cfg)
            times[arm].append(seconds)
            ppls.add(round(ppl, 6))
    cfg = configs["both"]
    best = {arm: min(runs) for arm, runs in times.items()}
    print(f"config: preset {args.preset} {' '.join(overrides)}; {len(evaluation_steps(cfg))} evaluations of "
          f"{cfg.train.eval_batches} batches; {args.threads} threads")
    print(f"storing the teacher's hidden states for {cfg.train.steps} steps (once per search): {store_s:.1f} s "
          f"({'the entry was already there' if existed else 'built now'})")
    for arm, runs in times.items():
        print(f"{arm:11s}: {', '.join(f'{t:.1f}' for t in runs)} s   ratio to recomputed "
              f"{best[arm] / best['recomputed']:.3f}")
    print(f"final val/ppl of every run: {', '.join(f'{p:.4f}' for p in sorted(ppls))} (must be one value)")
    return 0 if len(ppls) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
