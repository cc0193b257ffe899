"""One CTKD distillation run: teacher → student with a learned (adversarial) temperature.

The loop in `distill` reads top to bottom; per step:
    1. learning rate and λ from their schedules
    2. `loss_step`: the teacher's outputs (stored or computed) → student forward → temperature τ → loss =
       kd_weight · τ²·KL(teacher ‖ student at τ) + ce_weight · CE + align_weight · hidden alignment
    3. backward (the GRL flips the temperature's gradient), clip, step both optimisers
    4. log; every `eval_every` steps (and at 10%, 33%, 100%): evaluate, checkpoint
Its one seam to the outside is `report(metrics, checkpoint)`: the CLI passes a printer, the Ray trainable passes
`tune.report`. The teacher is reached only through `TeacherOutputs` ("the teacher's outputs for this batch").
Run it with `ctkd-tune distill --preset tiny --output runs/tiny`.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ctkd_tune.run.checkpoint import check_same_run, load_checkpoint, save_checkpoint
from ctkd_tune.run.checks import check_steps, divergence_limit, sanity_checks
from ctkd_tune.config import Config
from ctkd_tune.run import fused_step
from ctkd_tune.core.ctkd import lambda_at
from ctkd_tune.core.losses import kd_loss
from ctkd_tune.run.evaluation import MAX_LOSS, evaluate, reference_points
from ctkd_tune.inputs.data import held_out_batches, train_batch
from ctkd_tune.inputs.instruct import IGNORE_INDEX
from ctkd_tune.inputs.models import count_parameters
from ctkd_tune.run.prepare import Setup, prepare  # noqa: F401 (prepare is re-exported)
from ctkd_tune.run.progress import ProgressLines, print_report
from ctkd_tune.run.teacher_states import TeacherOutputs
from ctkd_tune.core.temperature import Temperature, temperature_stats

Report = Callable[[dict[str, Any], "Path | None"], None]


@dataclass
class RunResult:
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


def counted_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, tau: torch.Tensor,
                   mask: torch.Tensor | None, chunk_size: int, **divergence) -> tuple[torch.Tensor, torch.Tensor]:
    """(KD, CE), each a mean over the counted tokens: all of them (mask None, text) or where `mask` (B, T) is True
    (instruction data: the response tokens; y is IGNORE_INDEX elsewhere). Logits (B, T, V), y (B, T);
    `divergence` (divergence=, alpha=, beta=) goes to `kd_loss`."""
    kd = kd_loss(student_logits, teacher_logits, tau, mask=mask, chunk_size=chunk_size, **divergence)
    ce = F.cross_entropy(student_logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX)
    return kd, ce


def loss_step(cfg: Config, student: nn.Module, temperature: Temperature, align: nn.Module | None,
              teacher: TeacherOutputs, i: int, x: torch.Tensor, y: torch.Tensor, lam: float, autocast,
              attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Forward → τ → loss on batch (x, y) of 0-based step i; returns (loss, kd, ce, τ over the counted tokens).

        loss = kd_weight · τ²·D(teacher ‖ student at τ) + ce_weight · CE(student, y)   (D: loss.divergence)
               + align_weight · MSE(align(student hidden), teacher hidden)
    each a mean over the counted tokens: all of them for text (attention_mask None), the response tokens of
    instruction data (y != IGNORE_INDEX; the attention mask hides the padding).
    """
    mask = None if attention_mask is None else y != IGNORE_INDEX  # (B, T)
    with autocast():
        teacher_out = teacher.train(i, x, attention_mask)  # logits (B, T, V), hidden (B, T, H_t) when aligning
        student_out = student(x, attention_mask=attention_mask, output_hidden_states=align is not None)
    tau = temperature(i, lam, student_out.logits, teacher_out.logits)  # () or (B*T,)
    kd, ce = counted_losses(student_out.logits, teacher_out.logits, y, tau, mask, cfg.loss.chunk_size,
                            divergence=cfg.loss.divergence, alpha=cfg.loss.skew_alpha, beta=cfg.loss.jsd_beta)
    loss = cfg.loss.kd_weight * kd + cfg.loss.ce_weight * ce
    if align is not None:
        aligned = align(student_out.hidden_states[-1].float())
        diff = (aligned - teacher_out.hidden.float()).pow(2).mean(-1)  # (B, T)
        loss = loss + cfg.loss.align_weight * (diff.mean() if mask is None else diff[mask].mean())
    return loss, kd, ce, tau if tau.dim() == 0 or mask is None else tau[mask.flatten()]


def distill(cfg: Config, report: Report = print_report, *, setup: Setup | None = None,
            checkpoint_dir: str | Path | None = None, resume: str | Path | None = None,
            progress: bool = True) -> RunResult:
    """Run (or resume) one distillation; returns the summary, the per-step history and the trained student."""
    setup = setup or prepare(cfg)
    student, data, device = setup.student, setup.data, setup.device
    t, n_steps = cfg.train, cfg.train.steps
    autocast = autocast_for(t.precision, device)

    torch.manual_seed(t.seed)
    temperature = Temperature(cfg.temperature, n_steps).to(device)
    align = None
    if cfg.loss.align_weight > 0:
        align = nn.Linear(student.config.hidden_size, setup.teacher.model.config.hidden_size, bias=False).to(device)
    optimizer = student_optimizer(student, align, cfg)
    temp_optimizer = temperature.optimizer()
    # What a checkpoint holds besides the step, history and RNG: the same keys are saved and restored.
    trained = {"student": student, "optimizer": optimizer, "temperature": temperature,
               "temperature_optimizer": temp_optimizer, "align": align}
    teacher = TeacherOutputs.open(cfg, setup.teacher, data, hidden_only=setup.fused,  # stored states, else forward
                                  directory=setup.stored)
    # The fused path: the same numbers from hidden states, without (tokens, vocab) logits (fused_step).
    step_loss, evaluate_on, eval_chunk = (loss_step, evaluate, cfg.loss.chunk_size) if not setup.fused else \
        (fused_step.loss_step, fused_step.evaluate, fused_step.chunk_mb(cfg, device))
    held_out = [tuple(b.to(device) if b is not None else None for b in batch)  # (x, y, attention mask or None)
                for batch in held_out_batches(data, t.eval_batches, t.batch_size, cfg.data.block_size)]
    eval_at = evaluation_steps(cfg)
    clip = t.grad_clip if t.grad_clip > 0 else float("inf")

    start, history, wall_before = 1, [], 0.0
    if resume is not None:
        state = load_checkpoint(resume, device)
        check_same_run(state["config"], cfg.flat())
        for key, obj in trained.items():
            if obj is not None:
                obj.load_state_dict(state[key])
        torch.set_rng_state(state["rng"].cpu())
        start, history, wall_before = state["step"] + 1, state["history"], state["wall_time"]
        references = state.get("references", {})
    else:
        references = reference_points(student, teacher, held_out, evaluate_on, eval_chunk, autocast)
        if progress:
            derived = ", initialised from its layers" if cfg.model.student_init_from_teacher else ""
            tqdm.write(f"teacher {count_parameters(setup.teacher.model) / 1e6:.1f} M parameters, student "
                       f"{count_parameters(student) / 1e6:.1f} M "
                       f"({'loaded' if cfg.model.student else 'derived from the teacher' + derived})")
            tqdm.write(f"step      0  val/ppl {references['ref/student_val_ppl_start']:9.2f}  "
                       f"(the teacher's: {references['ref/teacher_val_ppl']:.2f})")
    diverge_above = divergence_limit(cfg, references)

    status, started = "completed", time.perf_counter()
    student.train()
    bar = tqdm(range(start, n_steps + 1), initial=start - 1, total=n_steps, dynamic_ncols=True, leave=False,
               disable=not (progress and sys.stderr.isatty()))
    lines = ProgressLines(t.progress_every, t.progress_seconds, n_steps) if progress and bar.disable else None
    for step in bar:
        i = step - 1  # 0-based position in every schedule
        tic = time.perf_counter()
        # 1. learning rate and λ
        lr = get_lr(i, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        lam = lambda_at(cfg.schedule, i, n_steps) if cfg.temperature.adversarial else 0.0

        # 2. forward and loss: teacher outputs, student, temperature
        x, y, attention_mask = (b.to(device) if b is not None else None for b in  # (B, T) each; mask: text None
                                train_batch(data, i, t.batch_size, cfg.data.block_size, t.resolved_data_seed))
        loss, kd, ce, tau = step_loss(cfg, student, temperature, align, teacher, i, x, y, lam, autocast,
                                      attention_mask)
        if not torch.isfinite(loss):
            status = f"diverged at step {step}: non-finite loss"
            break

        # 3. backward, clip, step
        optimizer.zero_grad(set_to_none=True)
        if temp_optimizer is not None:
            temp_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"] +
                                                   optimizer.param_groups[1]["params"], clip)
        if not torch.isfinite(grad_norm):
            status = f"diverged at step {step}: non-finite gradient"
            break
        optimizer.step()
        if temp_optimizer is not None:
            temp_optimizer.step()

        # 4. log, evaluate, checkpoint, report
        row = {"step": step, "train/loss": loss.item(), "train/kd_loss": kd.item(), "train/ce_loss": ce.item(),
               "train/grad_norm": grad_norm.item(), "train/lr": lr,
               "train/tokens_per_s": x.numel() / (time.perf_counter() - tic),
               "ctkd/lambda": lam, **temperature_stats(tau)}
        if step in eval_at:
            row.update(evaluate_on(student, teacher, held_out, eval_chunk, autocast), **references)
            if not math.isfinite(row["val/loss"]) or row["val/loss"] >= MAX_LOSS:
                status = f"diverged at step {step}: non-finite validation loss"
                break
            if row["val/ppl"] > diverge_above:  # relative thresholds: far above where this student started
                status = (f"diverged at step {step}: val/ppl {row['val/ppl']:.4g} rose above "
                          f"{cfg.checks.diverge_factor:g} × its start ({references['ref/student_val_ppl_start']:.4g})")
                history.append(row)
                report(row, None)
                break
        history.append(row)
        bar.set_postfix(loss=f"{row['train/loss']:.3f}", τ=f"{row['ctkd/temperature']:.2f}", λ=f"{lam:.2f}",
                        ppl=f"{_last(history, 'val/ppl'):.1f}", tok_s=f"{row['train/tokens_per_s']:.0f}")
        saved = None
        if checkpoint_dir is not None and step in eval_at and \
                (t.checkpoint_every == 0 or step % t.checkpoint_every == 0 or step == n_steps):
            saved = save_checkpoint(checkpoint_dir, {
                "step": step, "config": cfg.flat(), "history": history, "rng": torch.get_rng_state(),
                "wall_time": wall_before + time.perf_counter() - started,
                **{key: obj.state_dict() if obj is not None else {} for key, obj in trained.items()},
                "references": references})
        report(row, saved)
        if lines is not None:
            lines.maybe_print(row)
    bar.close()

    summary = summarize(cfg, history, status, wall_before + time.perf_counter() - started, references)
    return RunResult(summary, history, student)


def _last(history: list[dict[str, Any]], key: str) -> float:
    return next((row[key] for row in reversed(history) if key in row), float("nan"))


def summarize(cfg: Config, history: list[dict[str, Any]], status: str, wall_time: float,
              references: dict[str, float] | None = None) -> dict[str, Any]:
    """Final and best val/ppl, the teacher's and the step-0 student's val/ppl, final temperature and λ, checks and
    the resolved config — all finite or None."""
    references = references or {}
    evals = [row for row in history if "val/ppl" in row]
    best = min(evals, key=lambda row: row["val/ppl"]) if evals else None
    final = history[-1] if history else {}
    checks = sanity_checks(history, cfg, references)
    return {
        "status": status,
        "steps": final.get("step", 0),
        "teacher_val_ppl": references.get("ref/teacher_val_ppl"),
        "student_val_ppl_start": references.get("ref/student_val_ppl_start"),
        "final_val_ppl": evals[-1]["val/ppl"] if evals else None,
        "best_val_ppl": best["val/ppl"] if best else None,
        "best_step": best["step"] if best else None,
        "final_val_kl": evals[-1]["val/kl"] if evals else None,
        "final_top1_agreement": evals[-1]["val/top1_agreement"] if evals else None,
        "final_temperature": final.get("ctkd/temperature"),
        "final_lambda": final.get("ctkd/lambda"),
        "temperature_runaway": not checks["no_temperature_runaway"]["passed"],
        "wall_time_s": round(wall_time, 3),
        "checks": checks,
        "config": cfg.to_dict(),
    }
