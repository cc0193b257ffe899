"""Teacher and student models: loading, deriving a student, and the teacher's narrow interface.

Teacher and student are any Hugging Face causal LMs (hub id in the local cache, local directory, or a GGUF file in
a directory), or the embedded `builtin:` models. `trust_remote_code` stays off unless the config asks. A teacher
and student that do not share a vocabulary are rejected before any training.

The loop sees the teacher only through `Teacher`: "teacher outputs for this batch". A cache of teacher logits or
a teacher shared by many runs can replace it without touching the loop.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ctkd_tune.config import ConfigError, ModelConfig

BUILTIN_PREFIX = "builtin:"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # "org/name" or "name"


@dataclass
class TeacherOutput:
    logits: torch.Tensor  # (B, T, V)
    hidden: torch.Tensor | None  # (B, T, H_teacher), last layer, only when asked for


class Teacher:
    """A frozen causal LM in eval mode: `teacher(input_ids) -> TeacherOutput`, computed without gradients."""

    def __init__(self, model: nn.Module, with_hidden: bool = False):
        self.model = model.eval().requires_grad_(False)
        self.with_hidden = with_hidden

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor) -> TeacherOutput:
        out = self.model(input_ids, output_hidden_states=self.with_hidden)
        return TeacherOutput(out.logits, out.hidden_states[-1] if self.with_hidden else None)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_model_paths(cfg: ModelConfig) -> None:
    """Fail fast on a local path that does not exist (hub ids are checked when loaded)."""
    for field, value in (("model.teacher", cfg.teacher), ("model.student", cfg.student)):
        if value is None or value.startswith(BUILTIN_PREFIX) or Path(value).expanduser().exists():
            continue
        if not HUB_ID.fullmatch(value):  # not an existing path and not shaped like "org/name": a missing path
            raise ConfigError(f"{field}: no such model directory: {value}")
    if cfg.teacher.startswith(BUILTIN_PREFIX):
        from ctkd_tune.embedded import BUILTIN_NAMES

        name = cfg.teacher[len(BUILTIN_PREFIX):]
        if name not in BUILTIN_NAMES:
            raise ConfigError(f"model.teacher: unknown built-in model {name!r}; choose from {', '.join(BUILTIN_NAMES)}")


def _from_pretrained(path: str, gguf_file: str | None, trust_remote_code: bool, field: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        model = AutoModelForCausalLM.from_pretrained(os.path.expanduser(path), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser(path), **kwargs)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{field}: cannot load {path!r}: {first_line}") from None
    return model, tokenizer


def load_teacher(cfg: ModelConfig, device: torch.device):
    """(model, tokenizer) of the teacher."""
    if cfg.teacher.startswith(BUILTIN_PREFIX):
        from ctkd_tune.embedded import builtin_teacher

        return builtin_teacher(cfg.teacher[len(BUILTIN_PREFIX):], device=str(device))
    model, tokenizer = _from_pretrained(cfg.teacher, cfg.teacher_gguf_file, cfg.trust_remote_code, "model.teacher")
    return model.to(device), tokenizer


def load_student(cfg: ModelConfig, teacher: nn.Module, tokenizer, device: torch.device, seed: int) -> nn.Module:
    """The student: loaded from `model.student`, or derived from the teacher's config with fresh weights."""
    if cfg.student is not None:
        student, student_tokenizer = _from_pretrained(cfg.student, cfg.student_gguf_file, cfg.trust_remote_code,
                                                      "model.student")
        check_same_vocabulary(tokenizer, student_tokenizer, teacher, student)
        return student.to(device)
    from transformers import AutoModelForCausalLM

    student_config = derive_student_config(cfg, teacher.config)
    torch.manual_seed(seed)  # the student's initial weights depend on train.init_seed only
    student = AutoModelForCausalLM.from_config(student_config)
    if cfg.student_init_from_teacher:
        init_from_teacher_layers(student, teacher)
    return student.to(device)


def derive_student_config(cfg: ModelConfig, teacher_config):
    """Copy of the teacher's config with fewer layers / a smaller width (the canonical HF attribute names)."""
    if cfg.teacher.startswith(BUILTIN_PREFIX) and not (cfg.student_layers or cfg.student_hidden):
        from ctkd_tune.embedded import builtin_student_config

        return builtin_student_config(cfg.teacher[len(BUILTIN_PREFIX):])
    config = copy.deepcopy(teacher_config)
    t_layers, t_hidden, t_heads = (config.num_hidden_layers, config.hidden_size, config.num_attention_heads)
    layers = cfg.student_layers or max(1, t_layers // 2)
    hidden = cfg.student_hidden or (t_hidden if cfg.student_init_from_teacher else max(8, t_hidden // 2))
    heads = cfg.student_heads or max(1, hidden // (t_hidden // t_heads))
    if hidden % heads:
        raise ConfigError(f"model.student_hidden ({hidden}) must be divisible by model.student_heads ({heads})")
    if cfg.student_init_from_teacher and hidden != t_hidden:
        raise ConfigError("model.student_init_from_teacher needs model.student_hidden equal to the teacher's "
                          f"hidden size ({t_hidden})")
    if layers > t_layers and cfg.student_init_from_teacher:
        raise ConfigError(f"model.student_layers ({layers}) exceeds the teacher's {t_layers} layers")
    config.num_hidden_layers, config.hidden_size, config.num_attention_heads = layers, hidden, heads
    if getattr(config, "num_key_value_heads", None) is not None:
        config.num_key_value_heads = max(1, heads * config.num_key_value_heads // t_heads)
    if getattr(config, "intermediate_size", None):
        config.intermediate_size = config.intermediate_size * hidden // t_hidden
    if getattr(config, "n_inner", None):
        config.n_inner = config.n_inner * hidden // t_hidden
    if getattr(config, "head_dim", None):
        config.head_dim = hidden // heads
    return config


def _layer_list(model: nn.Module, num_layers: int) -> tuple[str, nn.ModuleList]:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return name, module
    raise ConfigError("model.student_init_from_teacher: cannot find the model's list of layers")


def init_from_teacher_layers(student: nn.Module, teacher: nn.Module) -> None:
    """Copy the teacher's embeddings, head and evenly spaced layers into the student (same hidden size)."""
    s_name, s_layers = _layer_list(student, student.config.num_hidden_layers)
    _, t_layers = _layer_list(teacher, teacher.config.num_hidden_layers)
    picks = torch.linspace(0, len(t_layers) - 1, len(s_layers)).round().long().tolist()
    for s_layer, t_index in zip(s_layers, picks):
        s_layer.load_state_dict(t_layers[t_index].state_dict())
    t_state = teacher.state_dict()
    with torch.no_grad():
        for name, param in student.state_dict().items():
            if not name.startswith(s_name + ".") and name in t_state and t_state[name].shape == param.shape:
                param.copy_(t_state[name])


def check_same_vocabulary(teacher_tokenizer, student_tokenizer, teacher: nn.Module, student: nn.Module) -> None:
    """Distillation compares distributions over the same token ids: refuse anything else up front."""
    t_vocab, s_vocab = teacher.config.vocab_size, student.config.vocab_size
    if t_vocab != s_vocab:
        raise ConfigError(f"teacher and student vocabularies differ ({t_vocab} vs {s_vocab} logits): "
                          "they must share a tokenizer")
    if student_tokenizer is not None and teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise ConfigError("teacher and student tokenizers differ: distillation needs the same token ids")


def check_context(block_size: int, **models: nn.Module) -> None:
    """ConfigError if `data.block_size` exceeds a model's context length (its position embeddings would index past
    their end), e.g. check_context(cfg.data.block_size, teacher=teacher, student=student)."""
    for role, model in models.items():
        config = model.config
        context = next((getattr(config, key) for key in ("max_position_embeddings", "n_positions", "n_ctx")
                        if isinstance(getattr(config, key, None), int)), None)
        if context is not None and block_size > context:
            raise ConfigError(f"data.block_size {block_size} exceeds the {role}'s context length {context}")
