"""The frozen teacher (`Teacher`), and the teacher as its output head alone, for runs whose teacher outputs are all
stored (`teacher_states`).

A search trial or a validation run on stored teacher states never runs the teacher's transformer body: the
stored last hidden states go through the head (the logits path) or straight into the fused loss. So such a run
builds the teacher's modules on PyTorch's meta device (shapes, no memory) and reads only the head's weight (and
bias) from the safetensors or GGUF file; its memory is the student plus one (V, H) matrix.

    model = load_head_only(source, device)   # None when the head cannot be read alone: load the whole teacher

From a folder of safetensors the head keeps the file's dtype, as `from_pretrained` does by default; from a GGUF file
(one quantised file, which transformers would dequantise whole) only the head's tensor is read and dequantised,
to float32 as transformers does. A hub id, or a folder without safetensors, is loaded whole, as before.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ctkd_tune.inputs.models import BUILTIN_PREFIX, ModelSource


@dataclass
class TeacherOutput:
    logits: torch.Tensor | None  # (B, T, V); None on the fused path, which applies the head chunk by chunk
    hidden: torch.Tensor | None  # (B, T, H_teacher), last layer, when aligning or on the fused path


class Teacher:
    """A frozen causal LM in eval mode: `teacher(input_ids) -> TeacherOutput`, computed without gradients.

    `load_body` makes a head-only teacher (`load_head_only`: the body on the meta device): the first
    call that needs the body (a batch whose outputs were not stored) loads the whole model with it, once.
    """

    def __init__(self, model: nn.Module, with_hidden: bool = False, load_body: Callable[[], nn.Module] | None = None):
        self.model = model.eval().requires_grad_(False)
        self.with_hidden = with_hidden
        self.load_body = load_body

    @property
    def head_only(self) -> bool:
        return self.load_body is not None

    def _full(self) -> nn.Module:
        if self.load_body is not None:
            print("ctkd-tune: note: a batch's teacher outputs were not stored: loading the teacher's body",
                  file=sys.stderr)
            self.model = self.load_body().eval().requires_grad_(False)
            self.load_body = None
        return self.model

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TeacherOutput:
        out = self._full()(input_ids, attention_mask=attention_mask, output_hidden_states=self.with_hidden)
        return TeacherOutput(out.logits, out.hidden_states[-1] if self.with_hidden else None)

    @torch.no_grad()
    def body(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, H) last hidden state (after the final norm): what the output head reads. No head, no logits."""
        return self._full().base_model(input_ids, attention_mask=attention_mask).last_hidden_state


def weights_folder(source: ModelSource) -> Path | None:
    """The local folder of safetensors weights behind `source`, or None (GGUF, a hub id, no safetensors)."""
    if source.gguf_file:
        return None
    if source.path.startswith(BUILTIN_PREFIX):
        from ctkd_tune.inputs.embedded import build_teacher

        folder = build_teacher(source.path[len(BUILTIN_PREFIX):])
    else:
        folder = Path(source.path).expanduser()
    return folder if folder.is_dir() and any(folder.glob("*.safetensors")) else None


def load_head_only(source: ModelSource, device: torch.device, trust_remote_code: bool = False) -> nn.Module | None:
    """The causal LM of `source` with real weights in its output head only, every other parameter on the meta
    device; None when that cannot be done (load the whole teacher instead): no safetensors folder or GGUF file
    (a hub id), a head that is not a plain nn.Linear, or its weights not found under the model's own names."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if source.gguf_file:
        where, read = Path(source.path) / source.gguf_file, _gguf_head
        config = AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file)
    else:
        where, read = weights_folder(source), _safetensors_head
        if where is None:
            return None
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        return None
    tied = model.get_input_embeddings() is not None and model.get_input_embeddings().weight is head.weight
    found = read(where, model, head, tied)
    wanted = {"weight", "bias"} if head.bias is not None else {"weight"}
    if set(found) != wanted or found["weight"].shape != head.weight.shape:
        return None
    for part, tensor in found.items():
        setattr(head, part, nn.Parameter(tensor.to(device), requires_grad=False))
    if tied:  # keep the tie, so parameter counts see one matrix
        model.get_input_embeddings().weight = head.weight
    return model.eval().requires_grad_(False)


def _safetensors_head(folder: Path, model: nn.Module, head: nn.Linear, tied: bool) -> dict[str, torch.Tensor]:
    """The head's weight (and bias) from the folder's safetensors files, under any of the model's names for them
    (tied: the input embedding's name, and lm_head's); the file's dtype."""
    from safetensors import safe_open

    wanted = {"weight": _names_of(model, head.weight)}
    if head.bias is not None:
        wanted["bias"] = _names_of(model, head.bias)
    found: dict[str, torch.Tensor] = {}
    for file in _weight_files(folder):
        with safe_open(str(file), "pt") as weights:
            keys = set(weights.keys())
            for part, names in wanted.items():
                name = next((n for n in names if n in keys), None)
                if part not in found and name is not None:
                    found[part] = weights.get_tensor(name)
    return found


def _gguf_head(file: Path, model: nn.Module, head: nn.Linear, tied: bool) -> dict[str, torch.Tensor]:
    """The head's weight from the GGUF file, dequantised to float32 (as transformers loads GGUF): `output.weight`,
    or the token embedding `token_embd.weight` when the head is tied to it. A head with a bias: not read (None →
    the whole teacher). Reads the file's index and that one tensor, not the layers."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    tensors = {t.name: t for t in GGUFReader(file).tensors}
    name = "output.weight" if "output.weight" in tensors else "token_embd.weight" if tied else None
    tensor = tensors.get(name)
    if tensor is None or head.bias is not None:
        return {}
    return {"weight": torch.from_numpy(dequantize(tensor.data, tensor.tensor_type)).float()}


def _names_of(model: nn.Module, param: nn.Parameter) -> list[str]:
    return [name for name, p in model.named_parameters(remove_duplicate=False) if p is param]


def _weight_files(folder: Path) -> list[Path]:
    """The files a sharded checkpoint's index names, else every *.safetensors file."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return sorted(folder.glob("*.safetensors"))
