"""Benchmark: ctkd-tune against what users would run instead — TRL's GKDTrainer and a plain HF Trainer KD loop.

    pip install -e ".[bench]"                                        # TRL, for this benchmark only
    python benchmarks/bench_vs_peers.py                              # per step and per search-sized trial
    python benchmarks/bench_vs_peers.py --mode step --repeats 3
    python benchmarks/bench_vs_peers.py --preset tiny --long 12 --short 2 --trial-steps 30 --repeats 1   # smoke

The three arms, on the same teacher and student (the preset's, built by `ctkd_tune.prepare`: same initial
weights), the same batches (`get_batch` of the run's data seed, in order), the same thread count and precision:
    ctkd-tune  `distill` with CTKD's learned temperature (mode ctkd, global τ): τ²·KL at the learned τ + CE
    trl-gkd    TRL's `GKDTrainer`, β = 0 (forward KL), λ = 0 (no on-policy generation); its loss is KL at T = 1
               with no CE term and no temperature gradient (its `temperature` only samples), and it does not
               predict the last position of each sequence (it shifts logits and labels)
    hf-kd      what users write: a HF `Trainer` whose `compute_loss` is
               0.5·kl_div(log_softmax(s/T), softmax(t/T), batchmean)·T² + 0.5·CE, T = 2 fixed
Every run is its own process (nothing warm is shared); arms alternate A B C A B C. Measured per process: wall time
(from the parent), CPU time (user + system, the whole process: imports included) and peak RSS (VmHWM), and the
peak RSS during training alone (VmHWM reset just before it).

Two measurements:
    step   tokens/s of a training step, start-up cancelled: (long − short) steps × tokens / (t_long − t_short), per
           repeat. Evaluation is off in all three arms; the teacher runs forward at every step in all three
           (`train.teacher_cache_mb=0`).
    trial  one search-sized trial: `--trial-steps` (150) steps with the default search's evaluation cadence (every
           25 steps and at 10%, 33%, 100%: 7 evaluations of 8 held-out batches of 16), the whole process timed.
           ctkd-tune runs as a search trial does (the teacher's hidden states stored once per search beforehand —
           that one-time cost is printed separately — and a checkpoint at every evaluation, without Ray: Ray adds
           ~5 s a trial, `bench_search_overhead.py`); the peers evaluate their own loss on the same held-out
           batches at the same steps and save no checkpoints (HF's default, every 500 steps, never fires).
Ratios are ctkd-tune / peer in the same repeat; printed: min and median over repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARMS = ("ctkd-tune", "trl-gkd", "hf-kd")
HF_KD_TEMPERATURE = 2.0


# --- measuring one process ----------------------------------------------------------------------------------------

def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the workers: one arm, one run, in this process ----------------------------------------------------------------

def _config(args, steps: int):
    from ctkd_tune.config import load_config

    overrides = [f"train.steps={steps}", "train.eval_every=25", f"train.threads={args.threads}",
                 f"train.precision={args.precision}", *args.overrides]
    if args.mode == "step":
        overrides.append("train.teacher_cache_mb=0")  # the teacher's forward at every step, as in the peers
    return load_config(preset=args.preset, overrides=overrides)


def _batches(cfg, data):
    """The run's training batches in order, and the held-out batches, as rows for a HF dataset."""
    from ctkd_tune.inputs.data import eval_batches, get_batch

    def rows(pairs):
        return [{"input_ids": x_row, "attention_mask": [1] * len(x_row), "labels": x_row}
                for x, _ in pairs for x_row in x.tolist()]

    t = cfg.train
    train = [get_batch(data.train, i, t.batch_size, cfg.data.block_size, t.resolved_data_seed) for i in range(t.steps)]
    return rows(train), rows(eval_batches(data.val, t.eval_batches, t.batch_size, cfg.data.block_size))


def run_ctkd_tune(cfg, setup, trial: bool, work: Path) -> dict:
    import importlib

    loop = importlib.import_module("ctkd_tune.run.loop")  # the module (the package exports a function of that name)

    if not trial:
        loop.evaluation_steps = lambda cfg: set()  # per step: training steps only, as in the peers
    _reset_peak_rss()
    result = loop.distill(cfg, lambda metrics, saved: None, setup=setup, progress=False,
                          checkpoint_dir=work / "checkpoint" if trial else None)
    return {"final_val_ppl": result.summary["final_val_ppl"], "status": result.summary["status"]}


def run_peer(arm: str, cfg, setup, trial: bool, work: Path) -> dict:
    import torch
    import torch.nn.functional as F
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    from ctkd_tune.run.loop import evaluation_steps

    t = cfg.train
    train_rows, eval_rows = _batches(cfg, setup.data)
    teacher = setup.teacher.model.eval().requires_grad_(False)
    common = dict(output_dir=str(work / "out"), max_steps=t.steps, per_device_train_batch_size=t.batch_size,
                  per_device_eval_batch_size=t.batch_size, learning_rate=t.lr, lr_scheduler_type="cosine",
                  warmup_steps=t.lr_warmup_ratio, weight_decay=t.weight_decay, adam_beta2=0.95,
                  max_grad_norm=t.grad_clip, seed=t.seed, train_sampling_strategy="sequential", use_cpu=True,
                  bf16=cfg.train.precision == "bf16", report_to="none", disable_tqdm=True, save_strategy="no",
                  eval_strategy="no", dataloader_pin_memory=False)

    class EvaluateAt(TrainerCallback):  # the default search's cadence: every 25 steps and at 10%, 33%, 100%
        def __init__(self, steps):
            self.steps = steps

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in self.steps:
                control.should_evaluate = True

    kwargs = dict(train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(eval_rows),
                  data_collator=default_data_collator, callbacks=[EvaluateAt(evaluation_steps(cfg) if trial else ())])
    if arm == "trl-gkd":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        args = GKDConfig(**common, beta=0.0, lmbda=0.0, disable_dropout=False, max_length=cfg.data.block_size)
        trainer = GKDTrainer(model=setup.student, teacher_model=teacher, args=args,
                             processing_class=setup.tokenizer, **kwargs)
    else:
        class KDTrainer(Trainer):
            """The KD loop users write: HF's CE from `labels` plus kl_div at a fixed T, scaled by T²."""

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                out = model(**inputs)  # out.loss: CE on the shifted labels
                with torch.no_grad():
                    teacher_logits = teacher(input_ids=inputs["input_ids"]).logits
                s, tl, T = out.logits.flatten(0, 1), teacher_logits.flatten(0, 1), HF_KD_TEMPERATURE  # (N, V)
                kd = F.kl_div(F.log_softmax(s / T, -1), F.softmax(tl / T, -1), reduction="batchmean") * T ** 2
                loss = 0.5 * kd + 0.5 * out.loss
                return (loss, out) if return_outputs else loss

        trainer = KDTrainer(model=setup.student, args=TrainingArguments(**common), **kwargs)
    _reset_peak_rss()
    trainer.train()
    evals = [row["eval_loss"] for row in trainer.state.log_history if "eval_loss" in row]
    return {"final_eval_loss": evals[-1] if evals else None, "evaluations": len(evals)}


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from ctkd_tune.run.prepare import prepare

    cfg = _config(args, args.steps)
    setup = prepare(cfg)
    with tempfile.TemporaryDirectory(prefix="bench-vs-peers-") as work:
        tic, cpu = time.perf_counter(), _cpu_s()
        fn = run_ctkd_tune if args.worker == "ctkd-tune" else lambda *a: run_peer(args.worker, *a)
        out = fn(cfg, setup, args.mode == "trial", Path(work))
        out.update(train_wall_s=time.perf_counter() - tic, train_cpu_s=_cpu_s() - cpu, train_peak_mb=_peak_rss_mb())
    out.update(cpu_s=_cpu_s(), peak_mb=_peak_rss_mb(), threads=torch.get_num_threads())
    print("RESULT " + json.dumps(out), flush=True)


# --- the driver: alternate the arms, each run in a fresh process ----------------------------------------------------

def one_run(args, arm: str, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", arm, "--mode", args.mode, "--steps", str(steps), "--preset",
           args.preset, "--threads", str(args.threads), "--precision", args.precision,
           *[f"--set={o}" for o in args.overrides]]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error"}
    tic = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - tic
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{arm} ({steps} steps) failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT "):]), "wall_s": wall}


def _ratio_line(name: str, values: list[float]) -> str:
    each = ", ".join(f"{v:.2f}" for v in values)
    return f"{name}: min {min(values):.2f}x, median {statistics.median(values):.2f}x  ({each})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("step", "trial", "both"), default="both")
    parser.add_argument("--preset", default="shakespeare")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    parser.add_argument("--long", type=int, default=14, help="steps of the long run (per-step measurement)")
    parser.add_argument("--short", type=int, default=2, help="steps of the short run (per-step measurement)")
    parser.add_argument("--trial-steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    arms = args.arms.split(",")
    modes = ("step", "trial") if args.mode == "both" else (args.mode,)
    print(f"preset {args.preset}, {args.threads} thread(s), {args.precision}, arms {', '.join(arms)}, "
          f"{args.repeats} alternating repeats; load average at start {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs", flush=True)
    for mode in modes:
        args.mode = mode
        if mode == "trial" and "ctkd-tune" in arms:
            _store_teacher_states(args)
        runs: dict[str, list[dict]] = {arm: [] for arm in arms}
        for r in range(args.repeats):
            for arm in arms:
                if mode == "step":
                    long, short = one_run(args, arm, args.long), one_run(args, arm, args.short)
                    runs[arm].append({"long": long, "short": short})
                else:
                    runs[arm].append(one_run(args, arm, args.trial_steps))
                print(f"  [{mode} repeat {r + 1}] {arm}: {json.dumps(runs[arm][-1])}", flush=True)
        _print(args, mode, arms, runs)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


def _tokens_per_step(args) -> int:
    cfg = _config(args, 1)
    return cfg.train.batch_size * cfg.data.block_size


def _store_teacher_states(args) -> None:
    """What the search driver does once per search; its cost is printed, not counted in any trial."""
    from ctkd_tune.run import teacher_states
    from ctkd_tune.run.prepare import prepare

    cfg = _config(args, args.trial_steps)
    setup = prepare(cfg)
    tic = time.perf_counter()
    stored = teacher_states.build(cfg, setup.teacher, setup.data, log=lambda msg: None)
    print(f"teacher hidden states for the trial: {'stored' if stored else 'NOT stored'} "
          f"({time.perf_counter() - tic:.1f} s, once per search)", flush=True)


def _print(args, mode: str, arms: list[str], runs: dict[str, list[dict]]) -> None:
    tokens = _tokens_per_step(args)
    print(f"\n== {mode} ==")
    if mode == "step":
        n = (args.long - args.short) * tokens
        rate = {arm: [{"cpu": n / (x["long"]["cpu_s"] - x["short"]["cpu_s"]),
                       "wall": n / (x["long"]["wall_s"] - x["short"]["wall_s"]),
                       "peak": x["long"]["peak_mb"], "train_peak": x["long"]["train_peak_mb"]} for x in runs[arm]]
                for arm in arms}
        print(f"tokens/s per step ({args.long} − {args.short} steps of {tokens} tokens), peak RSS of the long run:")
    else:
        n = args.trial_steps * tokens
        rate = {arm: [{"cpu": n / x["cpu_s"], "wall": n / x["wall_s"], "peak": x["peak_mb"],
                       "train_peak": x["train_peak_mb"]} for x in runs[arm]] for arm in arms}
        print(f"tokens/s of a whole {args.trial_steps}-step trial process (start-up and evaluations included):")
    for arm in arms:
        med = lambda key: statistics.median(r[key] for r in rate[arm])  # noqa: E731
        print(f"  {arm:10s} CPU {med('cpu'):7.0f} tok/s   wall {med('wall'):7.0f} tok/s   peak RSS "
              f"{med('peak'):6.0f} MB (during training {med('train_peak'):6.0f} MB)   (medians)")
    if "ctkd-tune" in arms:
        for peer in (a for a in arms if a != "ctkd-tune"):
            pairs = list(zip(rate["ctkd-tune"], rate[peer]))
            print("  " + _ratio_line(f"ctkd-tune / {peer} tokens/s, CPU time", [a["cpu"] / b["cpu"] for a, b in pairs]))
            print("  " + _ratio_line(f"ctkd-tune / {peer} tokens/s, wall", [a["wall"] / b["wall"] for a, b in pairs]))
            print("  " + _ratio_line(f"ctkd-tune / {peer} peak RSS", [a["peak"] / b["peak"] for a, b in pairs]))


if __name__ == "__main__":
    sys.exit(main())
