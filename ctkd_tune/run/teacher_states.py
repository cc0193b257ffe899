"""The teacher's outputs on the training batches, computed once and reused by every run that sees those batches.

Batches are a pure function of (data seed, step) and the teacher is frozen, so at a given step the teacher's
output is the same in every trial of a search (they share the data seed) and in every arm of a validation seed.
The logits are V wide, too big to keep; the teacher's last hidden state is H wide (V/H = 32× smaller for the
embedded teacher) and its LM head turns it back into the logits, exactly: the head is a cheap part of the forward
(≈ 1/3 of it for the embedded teacher), the transformer body is the rest.

    path = build(cfg, teacher, data)                    # the search / validate driver, before its runs
    outputs = TeacherSource.open(cfg, teacher, data)  # in `loop.make_step`: the step's one view of the teacher
    out = outputs.train(step, x)                        # TeacherOutput: stored when it matches, else computed
    out = outputs.held_out(i, x)                        # held-out batch i: stored, else computed once and kept

An entry (in `cache_dir()/teacher-states/KEY/`) holds hidden.npy (steps, B, T, H) float32, ids.npy (steps, B, T)
int32, the same for the held-out batches (held_hidden.npy, held_ids.npy) and meta.json. KEY hashes the teacher
(its config and a sample of its weights), the training tokens, the data seed, batch size, block size and the
number of steps. `output` also compares the step's input ids with the
stored ones and falls back to the teacher's forward on any difference, so a stale entry can cost time, never
correctness. Built only when the head applied to the last hidden state reproduces the teacher's logits (a model
with soft-capping or a logit scale is left alone) and when the entry fits in `train.teacher_cache_mb`. The four
most recently used entries are kept.

A driver that built the entry passes its folder to its runs (`prepare(cfg, stored=folder)`). When the entry covers
the run (`covers`: every training step and held-out batch), the run loads only the teacher's head
(`teacher.load_head_only`), never its body; meta.json's head fingerprint ties the entry to that head.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ctkd_tune.config import Config
from ctkd_tune.inputs.data import TokenData, get_batch, held_out_batches
from ctkd_tune.inputs.cache import cache_dir, file_lock
from ctkd_tune.run.teacher import Teacher, TeacherOutput

KEEP_ENTRIES = 4
VERSION = 2  # bump when the layout or the key changes


class StoredStates:
    """A read-only entry: the teacher's last hidden states per training step, and its LM head."""

    def __init__(self, directory: Path, teacher: Teacher):
        self.directory, self.teacher = directory, teacher
        self.hidden = np.load(directory / "hidden.npy", mmap_mode="r")  # (steps, B, T, H)
        self.ids = np.load(directory / "ids.npy", mmap_mode="r")  # (steps, B, T)
        self.held = np.load(directory / "held_hidden.npy", mmap_mode="r")  # (eval batches, B, T, H)
        self.held_ids = np.load(directory / "held_ids.npy", mmap_mode="r")
        self.head = teacher.model.get_output_embeddings()
        self.misses = 0

    @classmethod
    def open(cls, cfg: Config, teacher: Teacher, data: TokenData,
             directory: Path | None = None) -> StoredStates | None:
        """The entry for cfg's batches: `directory` when the driver names it (and its head fingerprint is this
        teacher's), else the one found by hashing the teacher and the tokens; None when there is none."""
        if cfg.train.teacher_cache_mb <= 0 or cfg.data.format != "text":
            return None
        if directory is None:
            if not any(_entries().glob("*/meta.json")):
                return None  # nothing stored: skip hashing the teacher and the tokens
            directory = _entries() / _key(cfg, teacher, data)
        try:
            meta = json.loads((Path(directory) / "meta.json").read_text())
            if meta.get("head") != head_fingerprint(teacher.model):
                return None
            os.utime(Path(directory) / "meta.json")  # recently used: kept by the pruning
            return cls(Path(directory), teacher)
        except (OSError, ValueError):  # absent, pruned meanwhile, truncated, unreadable: the teacher computes it
            return None

    @torch.no_grad()
    def output(self, step: int, x: torch.Tensor) -> TeacherOutput:
        """The teacher's output on batch `x` of 0-based `step`, from the entry (or the teacher, if it differs)."""
        hidden = self.last_hidden(step, x)
        return self.teacher(x) if hidden is None else self.from_hidden(hidden)

    def last_hidden(self, step: int, x: torch.Tensor) -> torch.Tensor | None:
        """(B, T, H) stored last hidden state of batch `x` of 0-based `step`; None (a miss) if the entry differs."""
        if step >= len(self.ids) or not np.array_equal(self.ids[step], x.cpu().numpy()):
            self.misses += 1
            return None
        return torch.from_numpy(np.array(self.hidden[step])).to(x.device)  # (B, T, H)

    def held_out_hidden(self, i: int, x: torch.Tensor) -> torch.Tensor | None:
        """(B, T, H) stored last hidden state of held-out batch i; None if not stored or the batch differs."""
        if i >= len(self.held_ids) or not np.array_equal(self.held_ids[i], x.cpu().numpy()):
            return None
        return torch.from_numpy(np.array(self.held[i])).to(x.device)

    def from_hidden(self, hidden: torch.Tensor) -> TeacherOutput:
        return TeacherOutput(self.head(hidden), hidden if self.teacher.with_hidden else None)


class TeacherSource:
    """The loop's one view of the teacher: its outputs for training step i on batch x, and for held-out batch i.

    Training batches come from the stored entry (`StoredStates`) when a driver built one for these batches and the
    step's input ids match, else from the teacher's forward. Held-out batches come from the forward, kept after
    their first evaluation when all `eval_batches` of them fit in `eval_cache_mb` (the teacher is frozen).
    Either way the step (`step.Step`) gets the same `TeacherOutput` and never knows where it came from.
    """

    def __init__(self, teacher: Teacher, stored: StoredStates | None = None, eval_cache_mb: float = 0.0,
                 eval_batches: int = 1, hidden_only: bool = False):
        self.teacher, self.stored, self.hidden_only = teacher, stored, hidden_only
        self.eval_cache_bytes, self.eval_batches = eval_cache_mb * 2**20, eval_batches
        self.kept: dict[int, TeacherOutput] = {}

    @classmethod
    def open(cls, cfg: Config, teacher: Teacher, data: TokenData, hidden_only: bool = False,
             directory: Path | None = None) -> TeacherSource:
        """`hidden_only` (the fused path): outputs hold the last hidden state and no logits. `directory`: the
        stored entry a driver built for this run (else it is looked up by key)."""
        stored = StoredStates.open(cfg, teacher, data, directory)
        return cls(teacher, stored, cfg.train.eval_cache_mb, cfg.train.eval_batches, hidden_only)

    def train(self, step: int, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TeacherOutput:
        """The teacher's output on training batch `x` of 0-based `step` (instruction data: with its attention mask,
        never stored; the fused path: the last hidden state alone)."""
        if self.hidden_only:
            stored = self.stored is not None and attention_mask is None
            hidden = self.stored.last_hidden(step, x) if stored else None
            return TeacherOutput(None, self.teacher.body(x, attention_mask) if hidden is None else hidden)
        if self.stored is not None and attention_mask is None:
            return self.stored.output(step, x)
        return self.teacher(x, attention_mask)

    def held_out(self, i: int, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TeacherOutput:
        """The teacher's output on held-out batch `x`, the i-th of the evaluation."""
        out = self.kept.get(i)
        hidden = None
        if out is None and self.stored is not None and attention_mask is None:
            hidden = self.stored.held_out_hidden(i, x)
        if out is None and hidden is not None:
            out = TeacherOutput(None, hidden) if self.hidden_only else self.stored.from_hidden(hidden)
        elif out is None:
            out = TeacherOutput(None, self.teacher.body(x, attention_mask)) if self.hidden_only else \
                self.teacher(x, attention_mask)
            kept = out.hidden if self.hidden_only else out.logits
            if kept.numel() * kept.element_size() * self.eval_batches <= self.eval_cache_bytes:
                self.kept[i] = out
        return out


def build(cfg: Config, teacher: Teacher, data: TokenData, log=print) -> Path | None:
    """Compute the entry for cfg's training batches unless it exists; None when it cannot or should not be."""
    if cfg.train.teacher_cache_mb <= 0 or cfg.data.format != "text":  # instruction rows: not stored (yet)
        return None
    directory = _entries() / _key(cfg, teacher, data)
    if (directory / "meta.json").is_file():
        os.utime(directory / "meta.json")
        return directory
    t, seed = cfg.train, cfg.train.resolved_data_seed
    device = next(teacher.model.parameters()).device
    x, _ = get_batch(data.train, 0, t.batch_size, cfg.data.block_size, seed)
    hidden, exact = _probe(teacher, x.to(device))
    size_mb = (t.steps + t.eval_batches) * hidden.numel() * 4 / 2**20  # float32 (steps + held-out, B, T, H)
    if not exact:
        log("ctkd-tune: teacher outputs not stored: its logits are not its LM head applied to its last hidden "
            "state (e.g. soft-capping); every run computes them")
        return None
    if size_mb > t.teacher_cache_mb:
        log(f"ctkd-tune: teacher outputs not stored: {size_mb:.0f} MB > train.teacher_cache_mb="
            f"{t.teacher_cache_mb:g}; every run computes them")
        return None
    directory.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(directory.with_name(directory.name + ".lock")):  # concurrent builders: one computes
        if not (directory / "meta.json").is_file():
            _write(directory, cfg, teacher, data, device, size_mb, log)
    _prune()
    return directory


def _write(directory: Path, cfg: Config, teacher: Teacher, data: TokenData, device, size_mb: float, log) -> None:
    t, seed = cfg.train, cfg.train.resolved_data_seed
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        tic = time.perf_counter()
        states = ids = None
        from tqdm import tqdm

        # a bar with ETA on a terminal (silent in logs): this phase can take minutes with a large teacher
        for step in tqdm(range(t.steps), desc="storing the teacher's outputs", unit="batch", leave=False,
                         disable=None):
            x, _ = get_batch(data.train, step, t.batch_size, cfg.data.block_size, seed)
            hidden = teacher.body(x.to(device)).float().cpu().numpy()
            if states is None:
                states = np.lib.format.open_memmap(tmp / "hidden.npy", mode="w+", dtype=np.float32,
                                                   shape=(t.steps, *hidden.shape))
                ids = np.lib.format.open_memmap(tmp / "ids.npy", mode="w+", dtype=np.int32,
                                                shape=(t.steps, *x.shape))
            states[step], ids[step] = hidden, x.numpy()
        states.flush()
        ids.flush()
        del states, ids
        held = held_out_batches(data, t.eval_batches, t.batch_size, cfg.data.block_size)
        np.save(tmp / "held_hidden.npy", np.stack([teacher.body(x.to(device)).float().cpu().numpy() for x, *_ in held]))
        np.save(tmp / "held_ids.npy", np.stack([x.numpy().astype(np.int32) for x, *_ in held]))
        meta = {"version": VERSION, "steps": t.steps, "eval_batches": t.eval_batches, "batch_size": t.batch_size,
                "block_size": cfg.data.block_size, "teacher": cfg.model.teacher, "data_seed": seed,
                "head": head_fingerprint(teacher.model), "mb": round(size_mb, 1)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, directory)  # atomic: an entry is whole or absent
        log(f"ctkd-tune: stored the teacher's outputs for {t.steps} steps ({size_mb:.0f} MB) in "
            f"{time.perf_counter() - tic:.0f} s: every run on these batches skips the teacher's body")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def covers(directory: str | Path | None, cfg: Config) -> bool:
    """Whether the entry at `directory` holds every training step and held-out batch of cfg's run, so the run
    needs the teacher's head only."""
    try:
        meta = json.loads((Path(directory) / "meta.json").read_text()) if directory else None
    except (OSError, ValueError):
        return False
    t = cfg.train
    return bool(meta) and cfg.data.format == "text" and t.teacher_cache_mb > 0 and meta.get("version") == VERSION \
        and meta.get("steps", 0) >= t.steps and meta.get("eval_batches", 0) >= t.eval_batches \
        and meta.get("batch_size") == t.batch_size and meta.get("block_size") == cfg.data.block_size \
        and meta.get("data_seed") == t.resolved_data_seed


def head_fingerprint(model: torch.nn.Module) -> str:
    """A hash of a strided sample of the output head's weight (and its shape): which head the states were built for."""
    weight = model.get_output_embeddings().weight.detach()
    sample = weight.flatten()[:: max(1, weight.numel() // 4096)].float().cpu().numpy()
    return hashlib.sha256(str(tuple(weight.shape)).encode() + sample.tobytes()).hexdigest()[:16]


# --- helpers -----------------------------------------------------------------------------------------------------

def _entries() -> Path:
    return cache_dir() / "teacher-states"


@torch.no_grad()
def _probe(teacher: Teacher, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(last hidden state on x, whether the LM head applied to it gives the teacher's logits)."""
    hidden = teacher.body(x)
    head = teacher.model.get_output_embeddings()
    if head is None:
        return hidden, False
    logits = teacher(x).logits
    rebuilt = head(hidden)
    exact = rebuilt.shape == logits.shape and torch.allclose(rebuilt.float(), logits.float(), rtol=1e-5, atol=1e-5)
    return hidden, exact


def _key(cfg: Config, teacher: Teacher, data: TokenData) -> str:
    h = hashlib.sha256()
    model = teacher.model
    h.update(json.dumps({"version": VERSION, "config": model.config.to_json_string(), "steps": cfg.train.steps,
                         "batch_size": cfg.train.batch_size, "block_size": cfg.data.block_size,
                         "eval_batches": cfg.train.eval_batches,
                         "data_seed": cfg.train.resolved_data_seed}, sort_keys=True).encode())
    for name, p in model.state_dict().items():  # a sample of every tensor: another checkpoint, another key
        h.update(name.encode())
        h.update(p.detach().flatten()[:256].float().cpu().numpy().tobytes())
    h.update(data.train.cpu().numpy().tobytes())
    return h.hexdigest()[:24]


def _prune() -> None:
    entries = sorted((p for p in _entries().iterdir() if not p.name.startswith(".") and (p / "meta.json").is_file()),
                     key=lambda p: (p / "meta.json").stat().st_mtime, reverse=True)
    for old in entries[KEEP_ENTRIES:]:
        shutil.rmtree(old, ignore_errors=True)
