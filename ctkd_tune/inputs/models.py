"""Teacher and student models: loading, deriving a student, and the teacher's narrow interface.

Teacher and student are any Hugging Face causal LMs (hub id, local directory, a .gguf file or a directory holding
one, or `pkg:PACKAGE/FILE.gguf`, a GGUF file shipped inside an installed Python package), or the embedded
`builtin:` models. Paths are resolved and checked (existence, GGUF header and architecture, context length)
before any weight is read. `trust_remote_code` stays off unless the config asks. A teacher
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


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


PACKAGE_PREFIX = "pkg:"  # "pkg:PACKAGE/FILE": a file shipped inside an installed Python package


@dataclass
class ModelSource:
    """Where a model field points, resolved: a path or hub id, the GGUF file inside it, and what is known before
    any weight is read (architecture and context length of a GGUF file)."""
    path: str
    gguf_file: str | None = None
    context: int | None = None


def _package_file(value: str, field: str) -> Path:
    """`pkg:NAME/REL` → the file REL inside the installed package NAME (located without importing it)."""
    import importlib.util

    package, _, rel = value[len(PACKAGE_PREFIX):].partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{field}: Python package {package!r} is not installed (see the recipe's first lines)")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise ConfigError(f"{field}: package {package!r} has no file {rel!r}")
    return path


def _looks_local(value: str) -> bool:
    """A path, not a hub id: ./x, ../x, ~/x, /x, a .gguf name, more than one '/', a first folder that exists, or a
    bare name (no "org/") that is not in the local hub cache. Only "org/name" is tried on the hub."""
    if value.startswith((".", "/", "~")) or value.endswith(".gguf") or not HUB_ID.fullmatch(value):
        return True
    if "/" in value:
        return Path(value.split("/")[0]).is_dir()
    from huggingface_hub import try_to_load_from_cache

    return not isinstance(try_to_load_from_cache(value, "config.json"), str)


def resolve_model(value: str, gguf_file: str | None, field: str) -> ModelSource:
    """Resolve a model field without reading weights (see ModelSource); bad paths are one-line ConfigErrors.

    A `.gguf` file given as the model, or a folder holding exactly one (and no config.json), loads as GGUF; a
    missing local path is reported as such and never tried on the hub; a damaged GGUF file, or one whose
    architecture transformers cannot load, is an error naming the file.
    """
    if value.startswith(PACKAGE_PREFIX):
        value = str(_package_file(value, field))
    path = Path(value).expanduser()
    if not path.exists():
        if _looks_local(value):
            raise ConfigError(f"{field}: no such model path: {value}")
        if gguf_file:
            raise ConfigError(f"{field}_gguf_file needs a local folder; {value!r} is not one")
        return ModelSource(value)  # a hub id: loaded (or refused offline) by transformers
    if path.is_file():
        if path.suffix != ".gguf" or gguf_file:
            raise ConfigError(f"{field}: {value} is a file; give a model folder, or a .gguf file on its own")
        path, gguf_file = path.parent, path.name
    elif gguf_file is None and not (path / "config.json").is_file():
        found = sorted(p.name for p in path.glob("*.gguf"))
        if len(found) > 1:
            raise ConfigError(f"{field}: {value} holds several GGUF files ({', '.join(found)}); "
                              f"name one with {field}_gguf_file")
        gguf_file = found[0] if found else None
    if gguf_file is None:
        return ModelSource(str(path))
    if not (path / gguf_file).is_file():
        raise ConfigError(f"{field}: no GGUF file {gguf_file!r} in {path}")
    return ModelSource(str(path), gguf_file, context=inspect_gguf(path / gguf_file, field))


def inspect_gguf(file: Path, field: str) -> int | None:
    """Read a GGUF file's header (no weights): check it is intact and loadable; return its context length."""
    try:
        from gguf import GGUFReader
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        raise ConfigError(f"{field}: GGUF models need the gguf and accelerate packages "
                          "(pip install 'ctkd-tune[gguf]')") from None
    try:
        fields = GGUFReader(file).fields
        arch = bytes(fields["general.architecture"].parts[-1]).decode()
    except Exception as err:  # the reader raises struct, index, reshape and key errors on damaged files
        raise ConfigError(f"{field}: damaged or unreadable GGUF file {file} ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else 'truncated'})") from None
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ConfigError(f"{field}: GGUF architecture {arch!r} of {file} cannot be loaded by transformers "
                          f"(it loads {', '.join(sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {'general', 'tokenizer'}))})")
    context = fields.get(f"{arch}.context_length")
    return int(context.parts[-1][0]) if context is not None else None


def check_model_paths(cfg: ModelConfig) -> dict[str, ModelSource]:
    """Resolve teacher and student (see `resolve_model`); fail fast on anything that cannot load."""
    if cfg.teacher.startswith(BUILTIN_PREFIX):
        from ctkd_tune.inputs.embedded import BUILTIN_NAMES

        name = cfg.teacher[len(BUILTIN_PREFIX):]
        if name not in BUILTIN_NAMES:
            raise ConfigError(f"model.teacher: unknown built-in model {name!r}; choose from {', '.join(BUILTIN_NAMES)}")
        sources = {"teacher": ModelSource(cfg.teacher)}
    else:
        sources = {"teacher": resolve_model(cfg.teacher, cfg.teacher_gguf_file, "model.teacher")}
    if cfg.student is not None:
        sources["student"] = resolve_model(cfg.student, cfg.student_gguf_file, "model.student")
    return sources


def model_context(source: ModelSource, trust_remote_code: bool = False) -> int | None:
    """The longest sequence a model takes, from its config alone (no weights); None when it does not say."""
    if source.gguf_file or source.path.startswith(BUILTIN_PREFIX):
        if source.path.startswith(BUILTIN_PREFIX):
            from ctkd_tune.inputs.embedded import N_POSITIONS
            return N_POSITIONS
        return source.context
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(os.path.expanduser(source.path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None  # unreachable or odd: loading the model reports it properly
    return config_context(config)


def config_context(config) -> int | None:
    """The context length a transformers config states, under whichever name its architecture uses."""
    return next((getattr(config, k) for k in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length")
                 if isinstance(getattr(config, k, None), int)), None)


def check_block_size(block_size: int, contexts: dict[str, int | None]) -> None:
    """data.block_size must fit every model's context ({"model.teacher": 8192, ...}; None = unknown)."""
    for field, context in contexts.items():
        if context is not None and block_size > context:
            raise ConfigError(f"data.block_size ({block_size}) is longer than {field}'s context ({context} tokens)")


def _from_pretrained(source: ModelSource, trust_remote_code: bool, field: str, tokenizer_only: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"trust_remote_code": trust_remote_code}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    path = os.path.expanduser(source.path)
    try:
        if tokenizer_only:
            return AutoTokenizer.from_pretrained(path, **kwargs)
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{field}: cannot load {source.path!r}: {first_line}") from None


def load_tokenizer(cfg: ModelConfig, source: ModelSource):
    """The teacher's tokenizer (read before any weight, so data errors come first)."""
    if source.path.startswith(BUILTIN_PREFIX):
        from ctkd_tune.inputs.embedded import builtin_tokenizer

        return builtin_tokenizer(source.path[len(BUILTIN_PREFIX):])
    return _from_pretrained(source, cfg.trust_remote_code, "model.teacher", tokenizer_only=True)


def load_teacher(cfg: ModelConfig, device: torch.device, source: ModelSource | None = None, tokenizer=None):
    """(model, tokenizer) of the teacher; pass the tokenizer if `load_tokenizer` already read it."""
    source = source or check_model_paths(cfg)["teacher"]
    if source.path.startswith(BUILTIN_PREFIX):
        from ctkd_tune.inputs.embedded import builtin_teacher

        return builtin_teacher(source.path[len(BUILTIN_PREFIX):], device=str(device))
    model = _from_pretrained(source, cfg.trust_remote_code, "model.teacher")
    return model.to(device), tokenizer if tokenizer is not None else load_tokenizer(cfg, source)


def count_parameters(model: nn.Module) -> int:
    """Parameters of a model, tied weights counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def load_student(cfg: ModelConfig, teacher: nn.Module, tokenizer, device: torch.device, seed: int) -> nn.Module:
    """The student: loaded from `model.student`, or derived from the teacher's config with fresh weights."""
    if cfg.student is not None:
        source = resolve_model(cfg.student, cfg.student_gguf_file, "model.student")
        student = _from_pretrained(source, cfg.trust_remote_code, "model.student")
        student_tokenizer = _from_pretrained(source, cfg.trust_remote_code, "model.student", tokenizer_only=True)
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
        from ctkd_tune.inputs.embedded import builtin_student_config

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
    """`check_block_size` again on the loaded models' configs (a model whose context was unknown before loading),
    e.g. check_context(cfg.data.block_size, teacher=teacher, student=student)."""
    check_block_size(block_size, {f"model.{role}": config_context(model.config) for role, model in models.items()})
