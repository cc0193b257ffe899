"""One CTKD distillation run: teacher → student with a learned (adversarial) temperature.

The loop in `distill` reads top to bottom; per step:
    1. learning rate and λ from their schedules
    2. the step (`step.Step.loss`): the teacher's outputs (stored or computed) → student forward → τ →
       loss = kd_weight · τ²·D(teacher ‖ student at τ) + ce_weight · CE + align_weight · hidden alignment
       (D: loss.divergence; the logits path `step.LogitsStep` or the fused path `fused_step.FusedStep`)
    3. backward (the GRL flips the temperature's gradient), clip, step both optimisers
    4. log; every `eval_every` steps (and at 10%, 33%, 100%): evaluate (`Step.evaluate`), checkpoint
Its one seam to the outside is `report(metrics, checkpoint)`: the CLI passes a printer, the Ray trainable passes
`tune.report`. The teacher is reached only through `TeacherSource` ("the teacher's outputs for this batch").
Run it with `ctkd-tune distill --preset tiny --output runs/tiny`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ctkd_tune.config import Config
from ctkd_tune.core.ctkd import lambda_at
from ctkd_tune.core.temperature import Temperature, temperature_stats
from ctkd_tune.inputs.data import held_out_batches, train_batch
from ctkd_tune.inputs.models import count_parameters
from ctkd_tune.run.checkpoint import check_same_run, load_checkpoint, save_checkpoint
from ctkd_tune.run.checks import check_steps, divergence_limit
from ctkd_tune.run.evaluation import MAX_LOSS, reference_points
from ctkd_tune.run.fused_step import FusedStep, chunk_mb
from ctkd_tune.run.prepare import Setup, prepare
from ctkd_tune.run.progress import Progress, print_report, print_start
from ctkd_tune.run.step import Batch, LogitsStep, Step
from ctkd_tune.run.summary import summarize
from ctkd_tune.run.teacher_states import TeacherSource

Report = Callable[[dict[str, Any], "Path | None"], None]


@dataclass
class RunResult:
    """What `distill` returns: summary.json's content (`summary.summarize`), one row per step, the trained student."""
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    student: nn.Module


def get_lr(step: int, cfg: Config) -> float:
    """Student learning rate at 0-based `step`: 1) linear warmup, 2) cosine decay, 3) floor at min_lr_ratio."""
    t = cfg.train
    warmup = int(t.lr_warmup_ratio * t.steps)
    if step < warmup:
        return t.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, t.steps - 1 - warmup)
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def evaluation_steps(cfg: Config) -> set[int]:
    every = set(range(cfg.train.eval_every, cfg.train.steps + 1, cfg.train.eval_every))
    return every | set(check_steps(cfg.train.steps).values())


def autocast_for(precision: str, device: torch.device) -> Callable[[], Any]:
    """The forward passes' context: bf16 autocast (`bf16`, or `auto` on CUDA) or none (float32)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def student_optimizer(student: nn.Module, align: nn.Module | None, cfg: Config) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on biases, norms or the temperature, which is elsewhere)."""
    params = [p for m in (student, align) if m is not None for p in m.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.train.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.95))


@dataclass
class Trained:
    """What the run trains: the student, τ's module, the alignment projection (None without `loss.align_weight`) and
    their optimisers (the temperature's None when τ is not learned). A checkpoint saves and restores exactly these."""
    student: nn.Module
    temperature: Temperature
    align: nn.Module | None
    optimizer: torch.optim.Optimizer
    temperature_optimizer: torch.optim.Optimizer | None

    @classmethod
    def build(cls, cfg: Config, setup: Setup) -> Trained:
        """Fresh τ and alignment projection (seeded by train.seed), and both optimisers, for `setup.student`."""
        torch.manual_seed(cfg.train.seed)
        temperature = Temperature(cfg.temperature, cfg.train.steps).to(setup.device)
        align = None
        if cfg.loss.align_weight > 0:
            align = nn.Linear(setup.student.config.hidden_size, setup.teacher.model.config.hidden_size,
                              bias=False).to(setup.device)
        optimizer = student_optimizer(setup.student, align, cfg)
        return cls(setup.student, temperature, align, optimizer, temperature.optimizer())

    def parts(self) -> dict[str, Any]:
        """The checkpoint's keys → the objects whose state they hold."""
        return {"student": self.student, "optimizer": self.optimizer, "temperature": self.temperature,
                "temperature_optimizer": self.temperature_optimizer, "align": self.align}

    def state_dict(self) -> dict[str, Any]:
        return {key: obj.state_dict() if obj is not None else {} for key, obj in self.parts().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, obj in self.parts().items():
            if obj is not None:
                obj.load_state_dict(state[key])

    def backward(self, loss: torch.Tensor, clip: float) -> torch.Tensor:
        """Zero both optimisers' gradients, backpropagate, clip the student's (and alignment's) to `clip`: the norm."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.temperature_optimizer is not None:
            self.temperature_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"] +
                                              self.optimizer.param_groups[1]["params"], clip)

    def step(self) -> None:
        self.optimizer.step()
        if self.temperature_optimizer is not None:
            self.temperature_optimizer.step()

    def checkpoint(self, step: int, cfg: Config, history: list[dict[str, Any]], references: dict[str, float],
                   wall_time: float) -> dict[str, Any]:
        """The full training state after `step` completed updates, as `restore` reads it back."""
        return {"step": step, "config": cfg.flat(), "history": history, "rng": torch.get_rng_state(),
                "wall_time": wall_time, **self.state_dict(), "references": references}


def make_step(cfg: Config, setup: Setup, trained: Trained) -> Step:
    """The run's step, built once: the fused path when `prepare` resolved loss.fused to it (no (tokens, vocab)
    logits), else the logits path. Its teacher outputs come from the stored states, else the teacher's forward."""
    teacher = TeacherSource.open(cfg, setup.teacher, setup.data, hidden_only=setup.fused, directory=setup.stored)
    autocast = autocast_for(cfg.train.precision, setup.device)
    parts = (cfg, trained.student, trained.temperature, trained.align, teacher, autocast)
    return FusedStep(*parts, chunk_mb(cfg, setup.device)) if setup.fused else LogitsStep(*parts)


def restore(resume: str | Path, trained: Trained, cfg: Config,
            device: torch.device) -> tuple[int, list[dict[str, Any]], float, dict[str, float]]:
    """Load a checkpoint into `trained` and the RNG: (first step to run, history, wall time so far, references)."""
    state = load_checkpoint(resume, device)
    check_same_run(state["config"], cfg.flat())
    trained.load_state_dict(state)
    torch.set_rng_state(state["rng"].cpu())
    return state["step"] + 1, state["history"], state["wall_time"], state.get("references", {})


def checkpoint_due(cfg: Config, step: int, eval_at: set[int]) -> bool:
    """Checkpoints follow evaluations: every one (train.checkpoint_every 0), or those at its multiples and the end."""
    every = cfg.train.checkpoint_every
    return step in eval_at and (every == 0 or step % every == 0 or step == cfg.train.steps)


def distill(cfg: Config, report: Report = print_report, *, setup: Setup | None = None,
            checkpoint_dir: str | Path | None = None, resume: str | Path | None = None,
            progress: bool = True) -> RunResult:
    """Run (or resume) one distillation; returns the summary, the per-step history and the trained student.
    Longer than 60 lines on purpose: the training loop reads better whole, top to bottom (as nanoGPT's)."""
    setup = setup or prepare(cfg)
    t, n_steps, device = cfg.train, cfg.train.steps, setup.device
    trained = Trained.build(cfg, setup)
    path = make_step(cfg, setup, trained)  # the logits path, or the fused one
    held_out = [Batch.on(device, i, *batch) for i, batch in
                enumerate(held_out_batches(setup.data, t.eval_batches, t.batch_size, cfg.data.block_size))]
    eval_at, clip = evaluation_steps(cfg), t.grad_clip if t.grad_clip > 0 else float("inf")
    if resume is not None:
        start, history, wall_before, references = restore(resume, trained, cfg, device)
    else:
        start, history, wall_before, references = 1, [], 0.0, reference_points(path, held_out)
        if progress:
            print_start(cfg, count_parameters(setup.teacher.model), count_parameters(trained.student), references)
    diverge_above = divergence_limit(cfg, references)

    stop_reason, started = None, time.perf_counter()
    trained.student.train()
    bar = Progress(cfg, start, progress)
    for step in bar:
        i = step - 1  # 0-based position in every schedule and in the data
        tic = time.perf_counter()
        # 1. learning rate and λ
        lr = get_lr(i, cfg)
        for group in trained.optimizer.param_groups:
            group["lr"] = lr
        lam = lambda_at(cfg.schedule, i, n_steps) if cfg.temperature.adversarial else 0.0

        # 2. forward and loss: teacher outputs, student, temperature
        batch = Batch.on(device, i, *train_batch(setup.data, i, t.batch_size, cfg.data.block_size,
                                                 t.resolved_data_seed))
        out = path.loss(batch, lam)
        if not torch.isfinite(out.loss):
            stop_reason = f"diverged at step {step}: non-finite loss"
            break

        # 3. backward, clip, step
        grad_norm = trained.backward(out.loss, clip)
        if not torch.isfinite(grad_norm):
            stop_reason = f"diverged at step {step}: non-finite gradient"
            break
        trained.step()

        # 4. log, evaluate, checkpoint, report
        row = {"step": step, "train/loss": out.loss.item(), "train/kd_loss": out.kd.item(),
               "train/ce_loss": out.ce.item(), "train/grad_norm": grad_norm.item(), "train/lr": lr,
               "train/tokens_per_s": batch.x.numel() / (time.perf_counter() - tic),
               "ctkd/lambda": lam, **temperature_stats(out.tau)}
        if step in eval_at:
            row.update(path.evaluate(held_out), **references)
            if not math.isfinite(row["val/loss"]) or row["val/loss"] >= MAX_LOSS:
                stop_reason = f"diverged at step {step}: non-finite validation loss"
                break
            if row["val/ppl"] > diverge_above:  # relative thresholds: far above where this student started
                stop_reason = (f"diverged at step {step}: val/ppl {row['val/ppl']:.4g} rose above "
                               f"{cfg.checks.diverge_factor:g} × its start "
                               f"({references['ref/student_val_ppl_start']:.4g})")
                history.append(row)
                report(row, None)
                break
        history.append(row)
        saved = None
        if checkpoint_dir is not None and checkpoint_due(cfg, step, eval_at):
            saved = save_checkpoint(checkpoint_dir, trained.checkpoint(step, cfg, history, references,
                                                                       wall_before + time.perf_counter() - started))
        report(row, saved)
        bar.show(row)
    bar.close()

    summary = summarize(cfg, history, stop_reason, wall_before + time.perf_counter() - started, references)
    return RunResult(summary, history, trained.student)
