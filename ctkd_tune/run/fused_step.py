"""The fused path (`FusedStep`): the models' bodies give last hidden states, ``fused_loss`` applies the heads chunk
by chunk.

`loss.fused` chooses: `false` is the logits path (`step.LogitsStep`); `true` and `auto` take
this path when both models' logits are a plain linear head on their body's last hidden state, which
`fused_blocker` checks (an nn.Linear head, no logit soft-capping or scale in the config, and logits equal to
head(body(x)) on a probe batch). `true` on a model that cannot is a ConfigError naming the model; `auto` falls back
to the logits path with a one-line notice saying why. Both paths give the same numbers (tested); this one never
holds (tokens × vocab) logits, so the vocabulary of a real LLM (49k–152k) costs (chunk × vocab) buffers only.

    fused = use_fused(cfg, teacher_model, student, probe_ids)                  # in `prepare`: Setup.fused
    path = FusedStep(cfg, student, temperature, align, teacher, autocast, chunk_mb(cfg, device))
    out = path.loss(batch, lam)                                                # step.StepResult
    metrics = path.evaluate(held_out)
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch
from torch import nn

from ctkd_tune.config import Config, ConfigError
from ctkd_tune.core.fused_loss import CPU_CHUNK_MB, fused_eval_sums, fused_kd_ce_loss, fused_token_features
from ctkd_tune.core.temperature import Temperature
from ctkd_tune.run.evaluation import held_out_metrics
from ctkd_tune.run.step import Batch, StepResult, align_loss, counted_tau
from ctkd_tune.run.teacher_states import TeacherSource

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


class FusedStep:
    """The fused path (`step.Step`): the bodies' last hidden states, the heads applied chunk by chunk of
    `chunk_mb` (`chunk_mb()`), so no (tokens × vocab) logits are ever held; the same numbers as `LogitsStep`."""

    def __init__(self, cfg: Config, student: nn.Module, temperature: Temperature, align: nn.Module | None,
                 teacher: TeacherSource, autocast: Callable[[], Any], chunk_mb: float):
        self.cfg, self.student, self.temperature, self.align = cfg, student, temperature, align
        self.teacher, self.autocast, self.chunk_mb = teacher, autocast, chunk_mb

    def loss(self, batch: Batch, lam: float) -> StepResult:
        """`LogitsStep.loss` from hidden states and heads: the same (loss, kd, ce, τ over the counted tokens),

            loss = kd_weight · τ²·D(teacher ‖ student at τ) + ce_weight · CE(student, y)   (D: loss.divergence)
                   + align_weight · MSE(align(student hidden), teacher hidden)
        each a mean over the counted tokens (every token of text; the response tokens of instruction data).
        """
        lo, mask, mb, autocast = self.cfg.loss, batch.loss_mask, self.chunk_mb, self.autocast
        with autocast():
            teacher_hidden = self.teacher.train(batch.index, batch.x, batch.attention_mask).hidden  # (B, T, H_t)
            student_hidden = body(self.student)(batch.x, attention_mask=batch.attention_mask).last_hidden_state
        # (B, T, H_s): no head; the teacher's head is read per batch, as a head-only teacher may load its body
        heads = (student_hidden, *head_of(self.student), teacher_hidden, *head_of(self.teacher.teacher.model))

        def features() -> torch.Tensor:  # (B*T, 4), only for a per-token temperature
            with autocast():
                return fused_token_features(*heads, chunk_mb=mb)

        tau = self.temperature(batch.index, lam, features=features, device=batch.x.device)  # () or (B*T,)
        with autocast():
            kd, ce = fused_kd_ce_loss(*heads, batch.y, tau, mask, kd_weight=lo.kd_weight, ce_weight=lo.ce_weight,
                                      chunk_mb=mb, divergence=lo.divergence, alpha=lo.skew_alpha, beta=lo.jsd_beta)
        loss = lo.kd_weight * kd + lo.ce_weight * ce
        if self.align is not None:
            loss = loss + lo.align_weight * align_loss(self.align, student_hidden, teacher_hidden, mask)
        return StepResult(loss, kd, ce, counted_tau(tau, mask))

    @torch.no_grad()
    def evaluate(self, batches: list[Batch], with_teacher: bool = False) -> dict[str, float]:
        """`LogitsStep.evaluate` chunk by chunk: held-out perplexity, KL at T = 1 and top-1 agreement over the
        counted tokens; with_teacher adds the teacher's own perplexity as "teacher/ppl"."""
        self.student.eval()
        ce_sum = teacher_ce_sum = kl_sum = agree = count = 0.0
        for batch in batches:
            with self.autocast():
                teacher_hidden = self.teacher.held_out(batch.index, batch.x, batch.attention_mask).hidden  # (B, T, H_t)
                student_hidden = body(self.student)(batch.x, attention_mask=batch.attention_mask).last_hidden_state
                teacher_head = head_of(self.teacher.teacher.model)
                sums = fused_eval_sums(student_hidden, *head_of(self.student), teacher_hidden, *teacher_head, batch.y,
                                       mask=batch.counted, chunk_mb=self.chunk_mb)
                if with_teacher:  # the teacher as its own "student": its CE on the same labels
                    teacher_ce_sum += fused_eval_sums(teacher_hidden, *teacher_head, teacher_hidden, *teacher_head,
                                                      batch.y, chunk_mb=self.chunk_mb)["ce_sum"]
            ce_sum, kl_sum, agree, count = (ce_sum + sums["ce_sum"], kl_sum + sums["kl_sum"],
                                            agree + sums["top1_agree"], count + sums["tokens"])
        self.student.train()
        return held_out_metrics(ce_sum, kl_sum, agree, count, teacher_ce_sum if with_teacher else None)
