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

from ctkd_tune.checkpoint import check_same_run, load_checkpoint, save_checkpoint
from ctkd_tune.checks import check_steps, sanity_checks
from ctkd_tune.config import Config, ConfigError
from ctkd_tune.ctkd import lambda_at
from ctkd_tune.losses import kd_loss
from ctkd_tune.data import TokenData, eval_batches, get_batch, load_tokens, resolve_source, split_tokens
from ctkd_tune.models import Teacher, check_context, check_model_paths, check_same_vocabulary, load_student, \
    load_teacher, resolve_device
from ctkd_tune.teacher_states import TeacherOutputs
from ctkd_tune.temperature import Temperature, temperature_stats

Report = Callable[[dict[str, Any], "Path | None"], None]
MAX_LOSS = 700.0  # exp(700) ≈ 1e304, near float64's largest: a validation loss beyond it counts as divergence


@dataclass
class Setup:
    """Everything a run needs besides its config: built once by `prepare`, reusable across runs."""
    teacher: Teacher
    student: nn.Module
    tokenizer: Any
    data: TokenData
    device: torch.device


@dataclass
class RunResult:
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    student: nn.Module


def prepare(cfg: Config) -> Setup:
    """Load teacher, tokenizer, data and a fresh student; every bad path or mismatch fails here, before training."""
    check_model_paths(cfg.model)
    try:
        resolve_source(cfg.data.source)  # a missing data path fails here, before any model loads
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"data.source: {err}") from None
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    teacher_model, tokenizer = load_teacher(cfg.model, device)
    tokens = load_tokens(cfg.data.source, tokenizer, text_column=cfg.data.text_column,
                         max_tokens=cfg.data.max_tokens)
    vocab_size = teacher_model.config.vocab_size
    if int(tokens.max()) >= vocab_size:
        raise ConfigError(f"data holds token id {int(tokens.max())} but the teacher has only {vocab_size} logits")
    data = split_tokens(tokens, cfg.data.val_fraction, cfg.data.block_size, vocab_size=vocab_size)
    student = load_student(cfg.model, teacher_model, tokenizer, device, seed=cfg.train.resolved_init_seed)
    check_same_vocabulary(tokenizer, None, teacher_model, student)
    check_context(cfg.data.block_size, teacher=teacher_model, student=student)
    teacher = Teacher(teacher_model, with_hidden=cfg.loss.align_weight > 0)
    return Setup(teacher, student, tokenizer, data, device)


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


def student_optimizer(student: nn.Module, align: nn.Module | None, cfg: Config) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on biases, norms or the temperature, which is elsewhere)."""
    params = [p for m in (student, align) if m is not None for p in m.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.train.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.95))


def loss_step(cfg: Config, student: nn.Module, temperature: Temperature, align: nn.Module | None,
              teacher: TeacherOutputs, i: int, x: torch.Tensor, y: torch.Tensor, lam: float,
              autocast) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward → τ → loss on batch (x, y) of 0-based step i; returns (loss, kd, ce, τ).

        loss = kd_weight · τ²·D(teacher ‖ student at τ) + ce_weight · CE(student, y)   (D: loss.divergence)
               + align_weight · MSE(align(student hidden), teacher hidden)
    """
    with autocast():
        teacher_out = teacher.train(i, x)  # logits (B, T, V), hidden (B, T, H_t) when aligning
        student_out = student(x, output_hidden_states=align is not None)
    tau = temperature(i, lam, student_out.logits, teacher_out.logits)  # () or (B*T,)
    kd = kd_loss(student_out.logits, teacher_out.logits, tau, chunk_size=cfg.loss.chunk_size,
                 divergence=cfg.loss.divergence, alpha=cfg.loss.skew_alpha, beta=cfg.loss.jsd_beta)
    ce = F.cross_entropy(student_out.logits.flatten(0, 1).float(), y.flatten())
    loss = cfg.loss.kd_weight * kd + cfg.loss.ce_weight * ce
    if align is not None:
        aligned = align(student_out.hidden_states[-1].float())
        loss = loss + cfg.loss.align_weight * F.mse_loss(aligned, teacher_out.hidden.float())
    return loss, kd, ce, tau


@torch.no_grad()
def evaluate(student: nn.Module, teacher: TeacherOutputs, batches: list[tuple[torch.Tensor, torch.Tensor]],
             chunk_size: int, autocast) -> dict[str, float]:
    """Held-out student perplexity, KL to the teacher at T = 1, and top-1 agreement with the teacher."""
    student.eval()
    ce_sum = kl_sum = agree = count = 0.0
    for i, (x, y) in enumerate(batches):
        with autocast():
            teacher_logits = teacher.held_out(i, x).logits  # (B, T, V)
            student_logits = student(x).logits  # (B, T, V)
        n = y.numel()
        ce_sum += F.cross_entropy(student_logits.flatten(0, 1).float(), y.flatten(), reduction="sum").item()
        kl_sum += kd_loss(student_logits, teacher_logits, 1.0, chunk_size=chunk_size).item() * n
        agree += (student_logits.argmax(-1) == teacher_logits.argmax(-1)).sum().item()
        count += n
    student.train()
    ce = ce_sum / count
    return {"val/loss": ce, "val/ppl": math.exp(min(ce, MAX_LOSS)), "val/kl": kl_sum / count,
            "val/top1_agreement": agree / count}


def print_report(metrics: dict[str, Any], checkpoint: Path | None = None) -> None:
    """The CLI's reporter: one line per evaluation (the progress bar shows every step)."""
    if "val/ppl" in metrics:
        tqdm.write(f"step {metrics['step']:>6}  val/ppl {metrics['val/ppl']:9.2f}  val/kl {metrics['val/kl']:.4f}  "
                   f"T {metrics['ctkd/temperature']:.3f}  λ {metrics['ctkd/lambda']:.3f}")


def distill(cfg: Config, report: Report = print_report, *, setup: Setup | None = None,
            checkpoint_dir: str | Path | None = None, resume: str | Path | None = None,
            progress: bool = True) -> RunResult:
    """Run (or resume) one distillation; returns the summary, the per-step history and the trained student."""
    setup = setup or prepare(cfg)
    student, data, device = setup.student, setup.data, setup.device
    t, n_steps = cfg.train, cfg.train.steps
    use_bf16 = device.type == "cuda"
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

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
    teacher = TeacherOutputs.open(cfg, setup.teacher, data)  # stored states if a driver built them, else forward
    held_out = [(x.to(device), y.to(device)) for x, y in
                eval_batches(data.val, t.eval_batches, t.batch_size, cfg.data.block_size)]
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

    status, started = "completed", time.perf_counter()
    student.train()
    bar = tqdm(range(start, n_steps + 1), initial=start - 1, total=n_steps, dynamic_ncols=True, leave=False,
               disable=not (progress and sys.stderr.isatty()))
    for step in bar:
        i = step - 1  # 0-based position in every schedule
        tic = time.perf_counter()
        # 1. learning rate and λ
        lr = get_lr(i, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        lam = lambda_at(cfg.schedule, i, n_steps) if cfg.temperature.adversarial else 0.0

        # 2. forward and loss: teacher outputs, student, temperature
        x, y = (b.to(device) for b in get_batch(data.train, i, t.batch_size, cfg.data.block_size,
                                                t.resolved_data_seed))
        loss, kd, ce, tau = loss_step(cfg, student, temperature, align, teacher, i, x, y, lam, autocast)
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
            row.update(evaluate(student, teacher, held_out, cfg.loss.chunk_size, autocast))
            if not math.isfinite(row["val/loss"]) or row["val/loss"] >= MAX_LOSS:
                status = f"diverged at step {step}: non-finite validation loss"
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
                **{key: obj.state_dict() if obj is not None else {} for key, obj in trained.items()}})
        report(row, saved)
    bar.close()

    summary = summarize(cfg, history, status, wall_before + time.perf_counter() - started)
    return RunResult(summary, history, student)


def _last(history: list[dict[str, Any]], key: str) -> float:
    return next((row[key] for row in reversed(history) if key in row), float("nan"))


def summarize(cfg: Config, history: list[dict[str, Any]], status: str, wall_time: float) -> dict[str, Any]:
    """Final and best val/ppl, final temperature and λ, checks and the resolved config — all finite or None."""
    evals = [row for row in history if "val/ppl" in row]
    best = min(evals, key=lambda row: row["val/ppl"]) if evals else None
    final = history[-1] if history else {}
    checks = sanity_checks(history, cfg)
    return {
        "status": status,
        "steps": final.get("step", 0),
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
