"""Everything a run needs besides its config, loaded and checked before the first step: `prepare` → `Setup`.

    setup = prepare(cfg)                      # teacher, tokenizer, data, a fresh student; every bad input fails here
    setup = prepare(cfg, stored=FOLDER)       # a search or validation run: the teacher's head only, when it can
    result = distill(cfg, setup=setup)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctkd_tune.run import fused_step
from ctkd_tune.config import Config, ConfigError
from ctkd_tune.inputs.data import TokenData, load_data, max_token_id, resolve_source
from ctkd_tune.inputs.instruct import DataError, ExampleData
from ctkd_tune.inputs.models import check_block_size, check_context, check_model_paths, check_same_vocabulary, \
    load_student, load_teacher, load_tokenizer, model_context, resolve_device
from ctkd_tune.run.teacher import Teacher, load_head_only
from ctkd_tune.run.teacher_states import covers


@dataclass
class Setup:
    """Everything a run needs besides its config: built once by `prepare`, reusable across runs."""
    teacher: Teacher
    student: nn.Module
    tokenizer: Any
    data: TokenData | ExampleData
    device: torch.device
    fused: bool = False  # loss.fused resolved for these models: head + KD + CE from hidden states (FusedStep)
    stored: Path | None = None  # the teacher states a driver built for this run (teacher_states), if any



def prepare(cfg: Config, stored: str | Path | None = None) -> Setup:
    """Load teacher, tokenizer, data and a fresh student; every bad path or mismatch fails here, before training.

    Order: paths (and GGUF headers), block size against both contexts, tokenizer, data (bad rows), then weights.
    `stored`: the teacher states a search or validation driver built for this run; when they cover it, only the
    teacher's output head is loaded (`teacher.load_head_only`), its body when first needed (never, if they match).
    """
    sources = check_model_paths(cfg.model)
    check_block_size(cfg.data.block_size, {f"model.{k}": model_context(v, cfg.model.trust_remote_code)
                                           for k, v in sources.items()})
    try:
        resolve_source(cfg.data.source)  # a missing data path fails here, before any model loads
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"data.source: {err}") from None
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    tokenizer = load_tokenizer(cfg.model, sources["teacher"])
    try:
        data = load_data(cfg.data, tokenizer)  # bad rows fail here, before any weight is read
    except DataError as err:
        raise ConfigError(str(err)) from None
    teacher_model = None
    if covers(stored, cfg) and not cfg.model.student_init_from_teacher:  # a student from its layers needs them all
        teacher_model = load_head_only(sources["teacher"], device, cfg.model.trust_remote_code)
    if teacher_model is not None:  # head only: the body is loaded if a batch turns out not to be stored
        load_body = lambda: load_teacher(cfg.model, device, sources["teacher"], tokenizer)[0]  # noqa: E731
    else:
        teacher_model, tokenizer = load_teacher(cfg.model, device, sources["teacher"], tokenizer)
        load_body = None
    data.vocab_size = vocab_size = teacher_model.config.vocab_size
    if max_token_id(data) >= vocab_size:
        raise ConfigError(f"data holds token id {max_token_id(data)} but the teacher has only {vocab_size} logits")
    student = load_student(cfg.model, teacher_model, tokenizer, device, seed=cfg.train.resolved_init_seed)
    check_same_vocabulary(tokenizer, None, teacher_model, student)
    check_context(cfg.data.block_size, teacher=teacher_model, student=student)
    teacher = Teacher(teacher_model, with_hidden=cfg.loss.align_weight > 0, load_body=load_body)
    probe = data.train[:cfg.data.block_size] if isinstance(data, TokenData) else data.train.ids[0, :-1]
    fused = fused_step.use_fused(cfg, teacher_model, student, probe[None].to(device),
                                 probe_teacher=not teacher.head_only)  # stored states: a head that reproduces logits
    return Setup(teacher, student, tokenizer, data, device, fused, Path(stored) if stored else None)
