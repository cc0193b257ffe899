"""Run configuration: nested dataclasses, presets, YAML round trip and `--set` overrides.

One `Config` describes one distillation run; a search varies a few of its fields per trial. Field names follow
the CTKD plan (`temperature.tau_min`, `schedule.lambda_max`, ...) and are the dotted keys everywhere: in YAML,
in `--set`, in Parquet columns and in the search spaces. Every check raises `ConfigError` naming the field, before
any model is loaded. A mode-like field (temperature.mode, schedule.type, loss.divergence, ...) is annotated with a
`Literal` of its choices, which `validate` checks for every such field at once; the tuples (TEMPERATURE_MODES, ...)
are read off the same Literals.

    cfg = load_config(path="run.yaml", preset=None, overrides=["train.steps=200"])
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration value is malformed or impossible; the message names the field."""


TemperatureMode = Literal["ctkd", "learnable", "fixed", "anneal"]
Granularity = Literal["global", "token"]
ScheduleType = Literal["cosine", "exp", "linear", "constant"]
TemperatureOptimizer = Literal["sgd", "adamw"]
DataFormat = Literal["text", "prompt_response", "chat"]
CheckThresholds = Literal["relative", "absolute"]
Fused = Literal["auto", "true", "false"]
Precision = Literal["auto", "fp32", "bf16"]
Device = Literal["auto", "cpu", "cuda"]
Divergence = Literal["forward_kl", "reverse_kl", "skew_kl", "jsd"]
"""The mode-like fields are annotated with these; `validate` checks every Literal field against its choices (in
their order, which is also the order of the tuples below)."""

TEMPERATURE_MODES = get_args(TemperatureMode)
LEARNED_MODES = ("ctkd", "learnable")  # modes whose temperature has parameters an optimiser trains
GRANULARITIES = get_args(Granularity)
SCHEDULE_TYPES = get_args(ScheduleType)
TEMPERATURE_OPTIMIZERS = get_args(TemperatureOptimizer)
DATA_FORMATS = get_args(DataFormat)
CHECK_THRESHOLDS = get_args(CheckThresholds)
FUSED_CHOICES = get_args(Fused)
PRECISIONS = get_args(Precision)
DEVICES = get_args(Device)
DIVERGENCES = get_args(Divergence)


@dataclass
class ModelConfig:
    """Which teacher and student to load, or how to derive the student from the teacher."""

    teacher: str = "builtin:shakespeare"
    """Teacher: a hub id or local directory, or `builtin:shakespeare` / `builtin:tiny` (embedded, offline)."""
    teacher_gguf_file: str | None = None
    """GGUF file name inside `teacher` to load (dequantised by transformers); None for regular checkpoints."""
    student: str | None = None
    """Student: a hub id or local directory; None derives it from the teacher's config (fields below)."""
    student_gguf_file: str | None = None
    """GGUF file name inside `student`, as for the teacher."""
    student_layers: int | None = None
    """Derived student: number of layers (None: the built-in student's, else half the teacher's)."""
    student_hidden: int | None = None
    """Derived student: hidden width (None: the built-in student's, else half the teacher's)."""
    student_heads: int | None = None
    """Derived student: attention heads (None: keep the head size of the teacher)."""
    student_init_from_teacher: bool = False
    """Derived student: copy evenly spaced teacher layers (needs student_hidden equal to the teacher's)."""
    trust_remote_code: bool = False
    """Allow custom modelling code from the model repository. Off unless you trust it."""


@dataclass
class DataConfig:
    """The text to distil on and how it is cut into sequences and held out."""

    source: str | list[str] = "builtin:shakespeare"
    """`builtin:shakespeare`, `builtin:tiny`, or paths to .txt/.jsonl/.parquet files, folders of them, or a
    Hugging Face `datasets` folder (save_to_disk)."""
    format: DataFormat = "text"
    """text (documents, every token counts) | prompt_response | chat (loss on the response tokens only)."""
    text_column: str = "text"
    """Format text: column holding the text in JSONL, Parquet and datasets sources."""
    prompt_column: str = "prompt"
    """Format prompt_response: column holding the prompt."""
    response_column: str = "response"
    """Format prompt_response: column holding the response."""
    messages_column: str = "messages"
    """Format chat: column holding a list of {role, content} messages (rendered by the tokenizer's chat template)."""
    packing: bool = True
    """prompt_response / chat: pack whole examples into each block (True) or one padded example per block."""
    block_size: int = 128
    """Tokens per training sequence."""
    val_fraction: float = 0.05
    """Held-out tail of the token stream used for evaluation."""
    max_tokens: int | None = None
    """Format text: truncate the token stream to this many tokens (quick runs); None uses everything."""


@dataclass
class TrainConfig:
    """The student's optimisation, evaluation cadence, seeds, caches, checkpoints and device."""

    steps: int = 400
    """Optimiser steps for the whole run; every schedule is defined over this horizon."""
    batch_size: int = 16
    """Sequences per step."""
    lr: float = 2e-3
    """Peak learning rate of the student (AdamW)."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of `lr` (cosine decay)."""
    lr_warmup_ratio: float = 0.05
    """Fraction of steps with linear learning-rate warmup (student only; not the λ warmup)."""
    weight_decay: float = 0.01
    """AdamW weight decay of the student (never applied to the temperature)."""
    grad_clip: float = 1.0
    """Clip the student's gradient norm to this; 0 disables clipping."""
    seed: int = 0
    """Seed of the run: student initialisation, data order and dropout."""
    data_seed: int | None = None
    """Seed of the data order only; None uses `seed`. A search fixes it so trials see the same batches."""
    init_seed: int | None = None
    """Seed of the student's initial weights only; None uses `seed`."""
    eval_every: int = 50
    """Evaluate on held-out data every this many steps (and at 10%, 33% and 100% of the run)."""
    eval_batches: int = 8
    """Held-out batches per evaluation."""
    teacher_cache_mb: float = 2048.0
    """Store the teacher's last hidden states on the training batches once, for every run on the same batches
    (all trials of a search, all arms of a validation seed), when they fit in this many MB; 0 never stores."""
    eval_cache_mb: float = 1024.0
    """Keep the teacher's logits on the held-out batches after the first evaluation when they fit in this many MB
    (the teacher is frozen: they never change); 0 recomputes them at every evaluation. Results are identical."""
    checkpoint_every: int = 0
    """Save the full training state every this many steps; 0 saves at every evaluation."""
    progress_every: int = 10
    """Without a terminal on stderr: one progress line every this many steps..."""
    progress_seconds: float = 30.0
    """...or when this many seconds passed since the last one (a terminal gets a progress bar instead)."""
    device: Device = "auto"
    """`auto` (CUDA when available, else CPU), `cpu` or `cuda`."""
    precision: Precision = "auto"
    """Forward passes in `fp32`, or `bf16` (autocast, on CPU too; softmax statistics stay float32); `auto`: bf16 on
    CUDA, fp32 on CPU."""
    threads: int | None = None
    """CPU threads for torch; None keeps torch's default."""

    @property
    def resolved_data_seed(self) -> int:
        """The seed of the data order: `data_seed`, else `seed`."""
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def resolved_init_seed(self) -> int:
        """The seed of the student's initial weights: `init_seed`, else `seed`."""
        return self.seed if self.init_seed is None else self.init_seed


@dataclass
class LossConfig:
    """The blend of the distillation loss, the cross-entropy and the optional hidden-state alignment."""

    kd_weight: float = 0.5
    """Weight of the temperature-scaled KD loss τ²·D(teacher, student), D = `divergence` (forward KL by default)."""
    ce_weight: float = 0.5
    """Weight of the next-token cross-entropy on the data."""
    align_weight: float = 0.0
    """Weight of the hidden-state alignment (MSE after a learned student→teacher projection); 0 disables."""
    chunk_size: int = 1024
    """Tokens per chunk in the KD loss: bounds the extra full-vocabulary memory."""
    fused: Fused = "auto"
    """auto | true | false: head + KD + CE fused from hidden states, never holding (tokens, vocab) logits (auto:
    when both models' logits are a plain linear head on their last hidden state)."""
    fused_chunk_mb: float = 0.0
    """Fused path: MB of (chunk, vocab) buffers, which set the tokens per chunk; 0: 224 on CPU, 1024 on CUDA."""
    divergence: Divergence = "forward_kl"
    """Divergence D in τ²·D(teacher, student): forward_kl | reverse_kl | skew_kl | jsd (val/kl stays forward KL)."""
    skew_alpha: float = 0.1
    """skew_kl's α in (0, 1): KL(p ‖ α·p + (1−α)·q) (DistiLLM's default 0.1; α → 0 is forward KL)."""
    jsd_beta: float = 0.5
    """jsd's β in (0, 1): β·KL(p ‖ m) + (1−β)·KL(q ‖ m), m = β·p + (1−β)·q (GKD; 0.5 is symmetric)."""


@dataclass
class TemperatureConfig:
    """The distillation temperature: how it is set or learned, its bounds and its own optimiser."""

    mode: TemperatureMode = "ctkd"
    """ctkd (adversarial, GRL) | learnable (plain minimisation, the broken ablation) | fixed | anneal."""
    granularity: Granularity = "global"
    """global (one temperature) | token (one per token, from an MLP on detached per-token features)."""
    tau_min: float = 1.0
    """Lower bound of the learnable temperature."""
    tau_max: float = 5.0
    """Upper bound of the learnable temperature."""
    tau_init: float = 2.0
    """Initial temperature (strictly inside the bounds)."""
    fixed_value: float = 2.0
    """Temperature of mode `fixed` (fallback A)."""
    anneal_start: float = 4.0
    """Mode `anneal` (fallback B): temperature at the first step..."""
    anneal_end: float = 1.5
    """...and at the last step, linearly in between."""
    optimizer: TemperatureOptimizer = "sgd"
    """Optimiser of the temperature's parameters: sgd (update size follows λ) | adamw (λ cancels out)."""
    lr: float = 0.05
    """Learning rate of the temperature's parameters (no weight decay, ever)."""
    hidden_dim: int = 64
    """Hidden width of the per-token temperature predictor."""

    @property
    def learned(self) -> bool:
        """τ has parameters that an optimiser trains (modes ctkd and learnable)."""
        return self.mode in LEARNED_MODES

    @property
    def adversarial(self) -> bool:
        """τ maximises the KD loss through the GRL, with λ from the schedule (mode ctkd)."""
        return self.mode == "ctkd"


@dataclass
class ScheduleConfig:
    """The λ curriculum: the adversary's strength over the run (used by mode `ctkd` only)."""

    type: ScheduleType = "cosine"
    """λ curriculum: cosine | exp | linear | constant."""
    lambda_max: float = 1.0
    """Final strength of the adversary (gradient reversal)."""
    warmup_ratio: float = 0.2
    """Fraction of steps with λ = 0 (the temperature does not move then)."""
    gamma: float = 10.0
    """Steepness of the `exp` schedule 2/(1+exp(-γp)) - 1."""

    def warmup_steps(self, total_steps: int) -> int:
        """Steps with λ = 0 at the start of a run of `total_steps`."""
        return int(self.warmup_ratio * total_steps)


@dataclass
class ChecksConfig:
    """Sanity thresholds a run is judged by: relative to the run's own reference points, or the plan's numbers."""

    thresholds: CheckThresholds = "relative"
    """relative (to the teacher's and the student's step-0 val/ppl, measured at the start) | absolute (ppl_* below)."""
    gap_closed_target: float = 0.25
    """Relative: by the end the student closes this fraction of its log-perplexity gap to the teacher."""
    diverge_factor: float = 10.0
    """Relative: a student whose val/ppl rises above this many times its step-0 value is stopped as diverged."""
    ppl_target: float = 250.0
    """Absolute: final val/ppl the student must reach."""
    ppl_at_10: float = 2000.0
    """Absolute: val/ppl ceiling at 10% of the run (and a search's divergence threshold)."""
    ppl_at_33: float = 800.0
    """Absolute: val/ppl ceiling at 33% of the run."""
    runaway_tolerance: float = 0.01
    """Temperature within this fraction of the range from a bound over the last 10% of the run is a runaway."""
    drift_share: float = 0.5
    """A learned temperature that went more than this share of the (log) way from tau_init to a bound and kept going
    is a drift."""


@dataclass
class Config:
    """One distillation run: every section, validated on construction (ConfigError names the field)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys → values, e.g. {"temperature.tau_min": 1.0, ...}."""
        return {f"{section}.{key}": value
                for section, fields in self.to_dict().items() for key, value in fields.items()}


# Presets are overrides of the defaults, in the same dotted keys as `--set`.
PRESETS: dict[str, dict[str, Any]] = {
    # The embedded default: Shakespeare, the project's pre-trained teacher, a student of ~1/4 its size.
    "shakespeare": {},
    # Seconds per run on a CPU: a quickly pre-trained tiny teacher on a small vocabulary. For tests and smoke runs.
    "tiny": {
        "model.teacher": "builtin:tiny",
        "data.source": "builtin:tiny",
        "data.block_size": 32,
        "train.steps": 60,
        "train.batch_size": 8,
        "train.lr": 3e-3,
        "train.eval_every": 20,
        "train.eval_batches": 2,
        "checks.ppl_target": 400.0,
    },
}


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the first impossible field."""
    for section in dataclasses.fields(cfg):  # every mode-like field, against its Literal's choices
        values = getattr(cfg, section.name)
        for name, allowed in _literal_fields(type(values)).items():
            _choice(f"{section.name}.{name}", getattr(values, name), allowed)
    t, s, tr, lo, d = cfg.temperature, cfg.schedule, cfg.train, cfg.loss, cfg.data
    if not t.tau_min > 0:
        raise ConfigError(f"temperature.tau_min must be > 0, got {t.tau_min}")
    if not t.tau_min < t.tau_max:
        raise ConfigError(f"temperature.tau_min ({t.tau_min}) must be below temperature.tau_max ({t.tau_max})")
    if not t.tau_min < t.tau_init < t.tau_max:
        raise ConfigError(f"temperature.tau_init ({t.tau_init}) must lie strictly between tau_min and tau_max "
                          f"({t.tau_min}, {t.tau_max})")
    for name in ("fixed_value", "anneal_start", "anneal_end", "lr"):
        if not getattr(t, name) > 0:
            raise ConfigError(f"temperature.{name} must be > 0, got {getattr(t, name)}")
    if t.granularity == "token" and not t.learned:
        raise ConfigError(f"temperature.granularity 'token' needs a learned temperature, not mode '{t.mode}'")
    if not s.lambda_max >= 0:
        raise ConfigError(f"schedule.lambda_max must be >= 0, got {s.lambda_max}")
    if not 0 <= s.warmup_ratio < 1:
        raise ConfigError(f"schedule.warmup_ratio must be in [0, 1), got {s.warmup_ratio}")
    if not s.gamma > 0:
        raise ConfigError(f"schedule.gamma must be > 0, got {s.gamma}")
    for name in ("steps", "batch_size", "eval_every", "eval_batches"):
        if not getattr(tr, name) >= 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(tr, name)}")
    if not tr.lr > 0:
        raise ConfigError(f"train.lr must be > 0, got {tr.lr}")
    if not 0 <= tr.lr_warmup_ratio < 1:
        raise ConfigError(f"train.lr_warmup_ratio must be in [0, 1), got {tr.lr_warmup_ratio}")
    if not 0 <= tr.min_lr_ratio <= 1:
        raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {tr.min_lr_ratio}")
    if tr.grad_clip < 0 or tr.checkpoint_every < 0 or tr.weight_decay < 0:
        raise ConfigError("train.grad_clip, train.checkpoint_every and train.weight_decay must be >= 0")
    for name in ("eval_cache_mb", "teacher_cache_mb"):
        if not getattr(tr, name) >= 0:
            raise ConfigError(f"train.{name} must be >= 0, got {getattr(tr, name)}")
    for name in ("kd_weight", "ce_weight", "align_weight"):
        if not getattr(lo, name) >= 0:
            raise ConfigError(f"loss.{name} must be >= 0, got {getattr(lo, name)}")
    if lo.kd_weight == 0 and lo.ce_weight == 0:
        raise ConfigError("loss.kd_weight and loss.ce_weight are both 0: nothing to train on")
    if not lo.chunk_size >= 1:
        raise ConfigError(f"loss.chunk_size must be >= 1, got {lo.chunk_size}")
    if not lo.fused_chunk_mb >= 0:
        raise ConfigError(f"loss.fused_chunk_mb must be >= 0, got {lo.fused_chunk_mb}")
    for name in ("skew_alpha", "jsd_beta"):
        if not 0 < getattr(lo, name) < 1:
            raise ConfigError(f"loss.{name} must be in (0, 1), got {getattr(lo, name)}")
    if not d.block_size >= 2:
        raise ConfigError(f"data.block_size must be >= 2, got {d.block_size}")
    if not 0 < d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
    if not d.source:
        raise ConfigError("data.source is empty")
    if not (tr.progress_every >= 1 and tr.progress_seconds > 0):
        raise ConfigError("train.progress_every must be >= 1 and train.progress_seconds > 0")
    c = cfg.checks
    if not (c.ppl_target > 0 and c.ppl_at_10 > 0 and c.ppl_at_33 > 0 and 0 <= c.runaway_tolerance < 0.5):
        raise ConfigError("checks.* must be positive (runaway_tolerance in [0, 0.5))")
    if not (0 <= c.gap_closed_target <= 1 and c.diverge_factor > 1):
        raise ConfigError("checks.gap_closed_target must be in [0, 1] and checks.diverge_factor > 1")
    if not 0 < c.drift_share <= 1:
        raise ConfigError(f"checks.drift_share must be in (0, 1], got {c.drift_share}")
    for name, value in cfg.flat().items():  # inf (and nan) pass some of the comparisons above: refuse them here
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}")


@functools.cache
def _literal_fields(section: type) -> dict[str, tuple[str, ...]]:
    """The fields of a config section annotated `Literal[...]`, with their choices."""
    hints = get_type_hints(section)
    return {f.name: get_args(hints[f.name]) for f in dataclasses.fields(section)
            if get_origin(hints[f.name]) is Literal}


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


# --- building a Config from dicts, YAML files, presets and --set overrides -------------------------------------

def from_dict(data: dict[str, Any]) -> Config:
    """Nested dict (as in YAML) → Config; unknown sections or keys are errors naming them."""
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    sections = {}
    for f in dataclasses.fields(Config):
        values = data.get(f.name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{f.name}' must be a mapping, got {type(values).__name__}")
        values = dict(values)
        cls = f.default_factory
        known = {g.name: g for g in dataclasses.fields(cls)}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"unknown config key '{f.name}.{key}'")
            values[key] = _coerce(f"{f.name}.{key}", value, getattr(cls(), key))
        sections[f.name] = cls(**values)
    unknown = set(data) - set(sections)
    if unknown:
        raise ConfigError(f"unknown config section '{sorted(unknown)[0]}'")
    return Config(**sections)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Check a YAML/--set value against the type of the field's default (None-able fields accept None)."""
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string; users write it that way
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str) or (name == "data.source" and isinstance(value, list)):
            return value
        if name == "loss.fused" and isinstance(value, bool):  # YAML reads `fused: true` as a bool
            return str(value).lower()
    raise ConfigError(f"{name} must be a {type(default).__name__}, got {value!r}")


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict; `overrides` is a dict or a list of "a.b=value" strings (YAML values)."""
    data = copy.deepcopy(data)
    items = overrides.items() if isinstance(overrides, dict) else (_parse_assignment(o) for o in overrides)
    for key, value in items:
        section, _, name = key.partition(".")
        if not name or "." in name:
            raise ConfigError(f"override key '{key}' must look like section.field")
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"config section '{section}' must be a mapping")
        data[section][name] = value
    return data


def _parse_assignment(text: str) -> tuple[str, Any]:
    key, eq, raw = text.partition("=")
    if not eq or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """`yaml.safe_load` of a file; a missing file or malformed YAML is a ConfigError naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"malformed YAML in {path}{where}: {getattr(err, 'problem', err)}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    data = load_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    # Exported files carry provenance next to the config; a run only needs the config.
    return data.get("config", data) if "provenance" in data else data


def load_config(path: str | Path | None = None, preset: str | None = None,
                overrides: dict[str, Any] | list[str] = ()) -> Config:
    """Defaults ← preset ← YAML file ← overrides, validated."""
    data: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        data = apply_overrides(data, PRESETS[preset])
    if path is not None:
        data = _merge(data, read_yaml(path))
    data = apply_overrides(data, overrides)
    return from_dict(data)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for section, values in top.items():
        if isinstance(values, dict) and isinstance(out.get(section), dict):
            out[section] = {**out[section], **values}
        else:
            out[section] = values
    return out


def dump_yaml(cfg: Config, path: str | Path | None = None, header: str | None = None) -> str:
    """YAML text of the full config (optionally written to `path`), opening with a comment line."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    if path is not None:
        from ctkd_tune.io import atomic_write_text
        atomic_write_text(path, text)
    return text
