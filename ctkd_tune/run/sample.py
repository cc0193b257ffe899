"""`ctkd-tune sample`: continuations of one prompt from a trained student and its teacher, side by side.

    ctkd-tune sample --student runs/smol/student --prompt "To be, or not to be"

The student is any folder `AutoModelForCausalLM.from_pretrained` reads (a run's `student/`); the teacher is
--teacher, else the `model.teacher` of the run's config.yaml next to the student folder. Sampling is seeded.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch

from ctkd_tune.config import ConfigError, ModelConfig, load_config
from ctkd_tune.inputs.models import BUILTIN_PREFIX, check_model_paths, load_teacher

COLUMN = 58


def load_student_dir(path: str | Path):
    """(model, tokenizer) of a saved student folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"--student: {path} is not a saved model folder (no config.json)")
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _teacher_config(student: Path, teacher: str | None) -> ModelConfig:
    if teacher is not None:
        return ModelConfig(teacher=teacher)
    run_config = student.expanduser().parent / "config.yaml"
    if not run_config.is_file():
        raise ConfigError(f"--teacher not given and no run config at {run_config}")
    return load_config(run_config).model


@torch.no_grad()
def continuations(model, tokenizer, prompt_ids: torch.Tensor, num: int, max_new_tokens: int, seed: int) -> list[str]:
    torch.manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(prompt_ids.repeat(num, 1), attention_mask=torch.ones_like(prompt_ids).repeat(num, 1),
                         do_sample=True, top_k=50, temperature=0.8, max_new_tokens=max_new_tokens,
                         pad_token_id=pad)  # (num, prompt + new)
    return [tokenizer.decode(row[prompt_ids.shape[1]:], skip_special_tokens=True).strip() for row in out]


def sample_side_by_side(student: str | Path, prompt: str, teacher: str | None = None, num: int = 2,
                        max_new_tokens: int = 40, seed: int = 0, chat: bool = False) -> str:
    """The table `ctkd-tune sample` prints: teacher left, student right, one row per continuation."""
    if num < 1 or max_new_tokens < 1:
        raise ConfigError("--num and --max-new-tokens must be >= 1")
    student_model, tokenizer = load_student_dir(student)
    model_cfg = _teacher_config(Path(student), teacher)
    source = check_model_paths(model_cfg)["teacher"]
    teacher_model, teacher_tokenizer = load_teacher(model_cfg, torch.device("cpu"), source)
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError("teacher and student tokenizers differ: not a teacher of this student")
    if chat:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]  # (1, P)
    columns = [continuations(m.eval(), tokenizer, ids, num, max_new_tokens, seed)
               for m in (teacher_model, student_model)]
    name = model_cfg.teacher if model_cfg.teacher.startswith(BUILTIN_PREFIX) else Path(model_cfg.teacher).name
    lines = [f"prompt: {prompt}", "", f"{'teacher: ' + name:{COLUMN}s} | student: {Path(student).name}",
             "-" * COLUMN + "-+-" + "-" * COLUMN]
    for i, (left, right) in enumerate(zip(*columns), 1):
        left_lines = textwrap.wrap(f"{i}. {left}", COLUMN) or [f"{i}."]
        right_lines = textwrap.wrap(f"{i}. {right}", COLUMN) or [f"{i}."]
        for a, b in zip(left_lines + [""] * len(right_lines), right_lines + [""] * len(left_lines)):
            if a or b:
                lines.append(f"{a:{COLUMN}s} | {b}")
        lines.append("")
    return "\n".join(lines)
