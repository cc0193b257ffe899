"""Search efficiency: training steps a search spends until it finishes a configuration within 2% of the best
val/ppl known, TPE + ASHA (what `ctkd-tune search` does) against random search without early stopping.

    python benchmarks/bench_search_efficiency.py                       # tiny preset, 150 steps, 16 trials, 3 seeds
    python benchmarks/bench_search_efficiency.py --seeds 5 --num-samples 20 --out results/bench-efficiency

Every search is a real `run_search` (Ray Tune trials of full distillations, Optuna study, the default space) on
the same base config: the same data order and the same student initialisation, so the objective is the same
function of the knobs in every search; only the method and the sampler's seed change. Known points are off for
both methods (`--known-points` turns them on for both), so the comparison is of the samplers and the scheduler.

The target is the best final val/ppl of any completed trial of any search in this run (the best known
configuration), plus 2%. For each search, `steps_to_target` counts the training steps all its trials had run
when it first finished a trial at or under the target (pruned trials count the steps they ran; concurrent trials
are ordered by the time of their reports). A search that never reaches the target is censored: it is shown with
">" and its total, which is a lower bound on its cost. The summary is the median over seeds of each method and
their ratio (TPE + ASHA / random; below 1 means TPE + ASHA finds a good configuration with fewer steps).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

METHODS = {"tpe+asha": ("tpe", "asha"), "random": ("random", "none")}


def run_one(cfg, method: str, seed: int, args, root: Path) -> dict:
    from ctkd_tune.search.driver import SearchSettings, run_search

    sampler, scheduler = METHODS[method]
    tic = time.perf_counter()
    result = run_search(cfg, SearchSettings(
        name=f"{method.replace('+', '-')}-seed{seed}", num_samples=args.num_samples, max_concurrent=args.max_concurrent,
        cpus_per_trial=1, results_root=root, seed=seed, sampler=sampler, scheduler=scheduler,
        points=None if args.known_points else [], verbose=0))
    counts = result.trials["status"].value_counts().to_dict()
    return {"method": method, "seed": seed, "trials": result.trials, "curves": result.curves,
            "wall_s": time.perf_counter() - tic, "counts": counts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--seeds", type=int, default=3, help="searches per method (sampler seeds 0..N-1)")
    parser.add_argument("--num-samples", type=int, default=16, help="trials per search")
    parser.add_argument("--max-concurrent", type=int, default=2, help="trials at once (one CPU each)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="within this fraction of the best val/ppl")
    parser.add_argument("--known-points", action="store_true", help="evaluate the plan's known points first")
    parser.add_argument("--out", help="keep the searches' result folders here (default: a temporary folder)")
    args = parser.parse_args()
    overrides = args.overrides or (["train.steps=150", "train.eval_every=25"] if args.preset == "tiny" else [])

    import ray

    from ctkd_tune.config import load_config
    from ctkd_tune.run.prepare import prepare
    from ctkd_tune.search.efficiency import steps_to_target

    cfg = load_config(preset=args.preset, overrides=overrides)
    prepare(cfg)  # teacher and tokens cached before any search
    ray.init(num_cpus=args.max_concurrent, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out).resolve() if args.out else Path(tmp)
        try:
            for seed in range(args.seeds):  # methods interleaved, so drift in machine load hits both
                for method in METHODS:
                    runs.append(run_one(cfg, method, seed, args, root))
                    r = runs[-1]
                    print(f"{method:9s} seed {seed}: {r['wall_s']:.0f} s, {r['counts']}", flush=True)
        finally:
            ray.shutdown()

    finals = [v for r in runs for v in r["trials"].loc[r["trials"]["status"] == "completed", "final_val_ppl"]]
    best = min(finals)
    target = best * (1 + args.tolerance)
    print(f"\nconfig: preset {args.preset} {' '.join(overrides)}; {cfg.train.steps} steps per trial, "
          f"{args.num_samples} trials per search, {args.max_concurrent} at once"
          f"{', known points first' if args.known_points else ', no known points'}")
    print(f"best final val/ppl of any completed trial: {best:.3f}; target ≤ {target:.3f} (+{args.tolerance:.0%})\n")
    print(f"{'method':9s} {'seed':>4s} {'steps to target':>15s} {'steps in all':>12s} {'own best':>9s} "
          f"{'completed':>9s} {'pruned':>6s} {'diverged':>8s} {'wall s':>7s}")
    medians, censored = {}, {}
    for method in METHODS:
        costs, found = [], 0
        for r in (r for r in runs if r["method"] == method):
            steps, total = steps_to_target(r["trials"], r["curves"], target)
            found += steps is not None
            done = r["trials"].loc[r["trials"]["status"] == "completed", "final_val_ppl"]
            costs.append(steps if steps is not None else total)
            shown = f"{steps}" if steps is not None else f">{total}"
            print(f"{method:9s} {r['seed']:>4d} {shown:>15s} {total:>12d} {done.min():>9.3f} "
                  f"{r['counts'].get('completed', 0):>9d} {r['counts'].get('pruned', 0):>6d} "
                  f"{r['counts'].get('diverged', 0):>8d} {r['wall_s']:>7.0f}")
        medians[method] = statistics.median(costs)
        censored[method] = args.seeds - found > (args.seeds - 1) // 2  # the median itself is a censored value
        print(f"{method:9s} median steps to target: {'≥' if censored[method] else ''}{medians[method]:.0f} "
              f"({found}/{args.seeds} searches reached it)")
    ratio = medians["tpe+asha"] / medians["random"]
    # a censored median is a lower bound on that method's cost (censored searches are the costliest)
    bound = {(False, False): "=", (False, True): "≤", (True, False): "≥"}.get(
        (censored["tpe+asha"], censored["random"]), "(both censored: no bound) ")
    print(f"\nratio tpe+asha / random (median steps to target) {bound} {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
