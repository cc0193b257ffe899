"""Benchmark: tokens/s of the `distill` loop against a naive loop written the way the plan reads.

The naive loop: teacher forward every step, full float32 log_softmax / softmax over the whole vocabulary,
F.kl_div(batchmean) · T², one AdamW over the student *and* the temperature. Both run on the same models (same
initial student weights), the same batches and the same number of steps, in this one process, alternating
repeats so machine noise hits both alike. Printed: median tokens/s of each and the ratio.

    python benchmarks/bench_distill_loop.py                  # shakespeare preset (builds the teacher once)
    python benchmarks/bench_distill_loop.py --preset tiny --steps 30
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from ctkd_tune import distill, load_config, prepare
from ctkd_tune.core.ctkd import CTKDTemperature, lambda_at
from ctkd_tune.inputs.data import get_batch


def naive_loop(cfg, setup, student) -> float:
    """The plan's loop, literally; returns tokens/s over all but the first two steps."""
    teacher, data, s = setup.teacher.model, setup.data, cfg.schedule
    temperature = CTKDTemperature(cfg.temperature.tau_min, cfg.temperature.tau_max, cfg.temperature.tau_init)
    optimizer = torch.optim.AdamW(list(student.parameters()) + list(temperature.parameters()), lr=cfg.train.lr)
    times = []
    for step in range(cfg.train.steps):
        tic = time.perf_counter()
        x, y = get_batch(data.train, step, cfg.train.batch_size, cfg.data.block_size, cfg.train.seed)
        with torch.no_grad():
            teacher_logits = teacher(x).logits.flatten(0, 1).float()  # (N, V)
        student_logits = student(x).logits.flatten(0, 1).float()  # (N, V)
        tau = temperature(lambda_at(s, step, cfg.train.steps))
        kd = F.kl_div(F.log_softmax(student_logits / tau, -1), F.softmax(teacher_logits / tau, -1),
                      reduction="batchmean") * tau ** 2
        loss = cfg.loss.kd_weight * kd + cfg.loss.ce_weight * F.cross_entropy(student_logits, y.flatten())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.train.grad_clip)
        optimizer.step()
        times.append(time.perf_counter() - tic)
    return x.numel() * len(times[2:]) / sum(times[2:])


def ours(cfg, setup, student) -> float:
    setup = copy.copy(setup)
    setup.student = student
    # train/tokens_per_s times the training step only (evaluation comes after), like the naive loop's timer.
    result = distill(cfg, report=lambda m, c: None, setup=setup, progress=False)
    rates = [row["train/tokens_per_s"] for row in result.history[2:]]
    return len(rates) / sum(1 / r for r in rates)  # harmonic mean = total tokens / total time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shakespeare")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = load_config(preset=args.preset, overrides=[f"train.steps={args.steps}",
                                                     f"train.eval_every={10 * args.steps}",
                                                     "checks.ppl_target=1e9"])
    setup = prepare(cfg)
    initial = copy.deepcopy(setup.student.state_dict())
    runs = {"naive": [], "ctkd-tune": []}
    for _ in range(args.repeats):
        for name, loop in (("naive", naive_loop), ("ctkd-tune", ours)):
            student = copy.deepcopy(setup.student)
            student.load_state_dict(initial)
            runs[name].append(loop(cfg, setup, student))
    naive, mine = statistics.median(runs["naive"]), statistics.median(runs["ctkd-tune"])
    tokens = cfg.train.batch_size * cfg.data.block_size
    print(f"preset {args.preset}: {args.steps} steps of {tokens} tokens, vocab "
          f"{setup.teacher.model.config.vocab_size}, {args.repeats} alternating repeats, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'loop':<12}{'tokens/s (median)':>20}")
    print(f"{'naive':<12}{naive:>20,.0f}")
    print(f"{'ctkd-tune':<12}{mine:>20,.0f}")
    print(f"speed ratio ctkd-tune / naive: {mine / naive:.2f}x")


if __name__ == "__main__":
    main()
