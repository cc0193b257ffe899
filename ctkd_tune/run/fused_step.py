"""The loop's fused path: the models' bodies give last hidden states, ``fused_loss`` applies the heads chunk by chunk.

`loss.fused` chooses: `false` is the logits path (`distill.loss_step` / `evaluation.evaluate`); `true` and `auto` take
this path when both models' logits are a plain linear head on their body's last hidden state, which
`fused_blocker` checks (an nn.Linear head, no logit soft-capping or scale in the config, and logits equal to
head(body(x)) on a probe batch). `true` on a model that cannot is a ConfigError naming the model; `auto` falls back
to the logits path with a one-line notice saying why. Both paths give the same numbers (tested); this one never
holds (tokens × vocab) logits, so the vocabulary of a real LLM (49k–152k) costs (chunk × vocab) buffers only.

    fused = use_fused(cfg, teacher_model, student, probe_ids)
    loss, kd, ce, tau = loss_step(cfg, student, temperature, align, teacher, i, x, y, lam, autocast)
    metrics = evaluate(student, teacher, batches, chunk_mb(cfg, device), autocast)
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ctkd_tune.config import Config, ConfigError
from ctkd_tune.run.evaluation import held_out_metrics
from ctkd_tune.core.fused_loss import CPU_CHUNK_MB, fused_eval_sums, fused_kd_ce_loss, fused_token_features
from ctkd_tune.inputs.instruct import IGNORE_INDEX
from ctkd_tune.run.teacher_states import TeacherOutputs
from ctkd_tune.core.temperature import Temperature

# Config attributes that change the logits after the head (Gemma 2/3, Cohere, Granite, Falcon-H1), with the value
# at which they do not.
LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logit_scale": 1.0, "logits_scaling": 1.0,
                    "lm_head_multiplier": 1.0}


def body(model: nn.Module) -> nn.Module:
    """The transformer without its output head: `model.base_model` (GPT-2's `transformer`, Llama's `model`)."""
    return model.base_model


def head_of(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (V, H), bias (V,) or None) of the model's output head (the embedding matrix when tied)."""
    head = model.get_output_embeddings()
    return head.weight, head.bias


@torch.no_grad()
def fused_blocker(model: nn.Module, probe_ids: torch.Tensor, probe: bool = True) -> str | None:
    """Why the model's logits are not head(body(x)) with a plain linear head, or None when they are. `probe=False`
    checks the head and the config only, without the forward (a head-only teacher has no body to run)."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        return f"output head is {type(head).__name__}, not an nn.Linear"
    for name, neutral in LOGIT_TRANSFORMS.items():
        value = getattr(model.config, name, neutral)
        if value is not None and value != neutral:
            return f"logits are transformed after the head ({name}={value})"
    if body(model) is model:
        return "no body separate from the head (base_model is the model itself)"
    if not probe:
        return None
    training = model.training
    model.eval()  # dropout off, so the two forwards compare
    try:
        logits = model(probe_ids).logits
        rebuilt = head(body(model)(probe_ids).last_hidden_state)
    finally:
        model.train(training)
    if rebuilt.shape != logits.shape or not torch.allclose(rebuilt.float(), logits.float(), rtol=1e-4, atol=1e-4):
        return "logits are not the output head applied to the last hidden state"
    return None


def use_fused(cfg: Config, teacher_model: nn.Module, student: nn.Module, probe_ids: torch.Tensor,
              log=lambda msg: print(msg, file=sys.stderr), probe_teacher: bool = True) -> bool:
    """Resolve `loss.fused` (auto | true | false) for these models; `true` on a model that cannot is a ConfigError."""
    if cfg.loss.fused == "false":
        return False
    for role, model, name in (("teacher", teacher_model, cfg.model.teacher),
                              ("student", student, cfg.model.student or "derived from the teacher")):
        why = fused_blocker(model, probe_ids, probe=probe_teacher or role == "student")
        if why is None:
            continue
        if cfg.loss.fused == "true":
            raise ConfigError(f"loss.fused=true, but the {role} ({name}) cannot take the fused path: {why}")
        log(f"ctkd-tune: loss.fused=auto: the logits path, because the {role} ({name}): {why}")
        return False
    return True


def chunk_mb(cfg: Config, device: torch.device) -> float:
    """`loss.fused_chunk_mb`, or its default. CPU: 224 MB, where at V = 151,936 (N = 2,048, H = 576) the loss is as
    fast as the logits path at < 0.1× its memory (`benchmarks/bench_fused_loss.py`; with fewer MB the head matmuls
    get too few rows to run fast); CUDA: 1024 MB (fewer kernel launches)."""
    return cfg.loss.fused_chunk_mb or (1024.0 if device.type == "cuda" else CPU_CHUNK_MB)


def loss_step(cfg: Config, student: nn.Module, temperature: Temperature, align: nn.Module | None,
              teacher: TeacherOutputs, i: int, x: torch.Tensor, y: torch.Tensor, lam: float,
              autocast, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """`distill.loss_step` on the fused path: the same (loss, kd, ce, τ over the counted tokens) from hidden states
    and heads; each loss a mean over the counted tokens (all of them for text, attention_mask None; the response
    tokens of instruction data, y != IGNORE_INDEX).

        loss = kd_weight · τ²·D(teacher ‖ student at τ) + ce_weight · CE(student, y)   (D: loss.divergence)
               + align_weight · MSE(align(student hidden), teacher hidden)
    """
    lo, mb = cfg.loss, chunk_mb(cfg, x.device)
    mask = None if attention_mask is None else y != IGNORE_INDEX  # (B, T)
    with autocast():
        teacher_hidden = teacher.train(i, x, attention_mask).hidden  # (B, T, H_t), stored or the teacher's body
        student_hidden = body(student)(x, attention_mask=attention_mask).last_hidden_state  # (B, T, H_s): no head
    heads = (student_hidden, *head_of(student), teacher_hidden, *head_of(teacher.teacher.model))

    def features() -> torch.Tensor:  # (B*T, 4), only for a per-token temperature
        with autocast():
            return fused_token_features(*heads, chunk_mb=mb)

    tau = temperature(i, lam, features=features, device=x.device)  # () or (B*T,)
    with autocast():
        kd, ce = fused_kd_ce_loss(*heads, y, tau, mask, kd_weight=lo.kd_weight, ce_weight=lo.ce_weight,
                                  chunk_mb=mb, divergence=lo.divergence, alpha=lo.skew_alpha, beta=lo.jsd_beta)
    loss = lo.kd_weight * kd + lo.ce_weight * ce
    if align is not None:
        diff = (align(student_hidden.float()) - teacher_hidden.float()).pow(2).mean(-1)  # (B, T)
        loss = loss + lo.align_weight * (diff.mean() if mask is None else diff[mask].mean())
    return loss, kd, ce, tau if tau.dim() == 0 or mask is None else tau[mask.flatten()]


@torch.no_grad()
def evaluate(student: nn.Module, teacher: TeacherOutputs, batches: list[tuple[torch.Tensor, ...]],
             chunk_mb: float, autocast, with_teacher: bool = False) -> dict[str, float]:
    """`evaluation.evaluate` on the fused path: held-out perplexity, KL at T = 1 and top-1 agreement, chunk by chunk;
    with_teacher adds the teacher's own perplexity as "teacher/ppl". Batches are (x, y, attention mask or None);
    like the logits path, every number is over the tokens the loss counts (y != IGNORE_INDEX)."""
    student.eval()
    ce_sum = teacher_ce_sum = kl_sum = agree = count = 0.0
    for i, (x, y, attention_mask) in enumerate(batches):
        counted = y != IGNORE_INDEX
        with autocast():
            teacher_hidden = teacher.held_out(i, x, attention_mask).hidden  # (B, T, H_t)
            student_hidden = body(student)(x, attention_mask=attention_mask).last_hidden_state  # (B, T, H_s)
            teacher_head = head_of(teacher.teacher.model)
            sums = fused_eval_sums(student_hidden, *head_of(student), teacher_hidden, *teacher_head, y,
                                   mask=counted, chunk_mb=chunk_mb)
            if with_teacher:  # the teacher as its own "student": its CE on the same labels
                teacher_ce_sum += fused_eval_sums(teacher_hidden, *teacher_head, teacher_hidden, *teacher_head, y,
                                                  chunk_mb=chunk_mb)["ce_sum"]
        ce_sum, kl_sum, agree, count = (ce_sum + sums["ce_sum"], kl_sum + sums["kl_sum"],
                                        agree + sums["top1_agree"], count + sums["tokens"])
    student.train()
    return held_out_metrics(ce_sum, kl_sum, agree, count, teacher_ce_sum if with_teacher else None)
