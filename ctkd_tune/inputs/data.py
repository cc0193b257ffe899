"""Tokenised training data: read text sources once, cache the token stream, split it, and cut batches.

A source is "builtin:shakespeare", "builtin:tiny", or paths (a directory means every *.txt, *.jsonl and
*.parquet in it, sorted, unless it is a Hugging Face `datasets` folder written by save_to_disk). This module reads
`data.format` text; prompt/response and chat data are `instruct.py`'s. Documents are joined with the tokenizer's eos token into one 1-D stream, cached
under cache_dir()/tokens/<hash>.npy. Batches are a pure function of (seed, step), so a resumed run sees
exactly the batches it would have seen without any data-loader state.

    tokens = load_tokens("builtin:tiny", builtin_tokenizer("tiny"))
    data = split_tokens(tokens, val_fraction=0.05, block_size=128, vocab_size=512)
    x, y = get_batch(data.train, step=0, batch_size=8, block_size=128, seed=0)  # (8, 128) each
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ctkd_tune.inputs.cache import cache_dir
from ctkd_tune.inputs.corpus import BUILTIN_NAMES, corpus_documents, corpus_files
from ctkd_tune.inputs.instruct import ExampleData, example_batch, example_eval_batches, is_datasets_dir, \
    load_examples, read_rows

SUFFIXES = (".txt", ".jsonl", ".parquet")
ENCODE_BATCH_CHUNKS = 20_000  # lines per call to the fast tokenizer: parallel, yet bounded memory


# -----------------------------------------------------------------------------
# sources -> documents

def resolve_source(source: str | list[str]) -> list[str | Path]:
    """Expand a source into builtin names and existing files, in a fixed order."""
    entries: list[str | Path] = []
    for item in [source] if isinstance(source, (str, os.PathLike)) else source:
        item = str(item)
        if item.startswith("builtin:"):
            if item.removeprefix("builtin:") not in BUILTIN_NAMES:
                raise ValueError(f"unknown builtin source {item!r}; "
                                 f"expected builtin:{' or builtin:'.join(BUILTIN_NAMES)}")
            entries.append(item)
            continue
        path = Path(item).expanduser().resolve()
        if not path.exists():
            raise FileNotFoundError(f"data source not found: {path}")
        if is_datasets_dir(path):
            entries.append(path)
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
            if not files:
                raise ValueError(f"no *.txt, *.jsonl or *.parquet files in data directory {path}")
            entries.extend(files)
        elif path.suffix in SUFFIXES:
            entries.append(path)
        else:
            raise ValueError(f"unsupported data file {path}: expected .txt, .jsonl or .parquet")
    return entries


def _documents(entry: str | Path, text_column: str) -> Iterator[str]:
    """The documents of one resolved entry: a builtin corpus, a .txt file, or rows of .jsonl/.parquet."""
    if isinstance(entry, str):
        yield from corpus_documents(entry.removeprefix("builtin:"))
    elif entry.suffix == ".txt":
        try:
            yield entry.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{entry}: not UTF-8 text (byte {err.start})") from None
    elif is_datasets_dir(entry) or entry.suffix == ".jsonl":
        for where, row in read_rows(entry, [text_column]):  # a .jsonl line that is not a JSON object: DataError
            if text_column not in row:
                raise ValueError(f"text column {text_column!r} missing in {where}")
            text = row[text_column]
            if text is not None and not isinstance(text, str):
                raise ValueError(f"{where}: text column {text_column!r} holds a {type(text).__name__}, not a string")
            if text:
                yield text
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(entry)
        except Exception as err:  # pyarrow raises several types for a truncated or foreign file
            raise ValueError(f"{entry}: unreadable Parquet file ({type(err).__name__})") from None
        if text_column not in schema.names:
            raise ValueError(f"text column {text_column!r} missing in {entry}")
        kind = schema.field(text_column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise ValueError(f"{entry}: text column {text_column!r} holds {kind} values, not strings")
        yield from (t for t in pq.read_table(entry, columns=[text_column]).column(text_column).to_pylist() if t)


# -----------------------------------------------------------------------------
# documents -> token stream (cached)

def _cache_key(entries: list[str | Path], tokenizer, text_column: str) -> str:
    """Hash of everything the stream depends on: files (path, size, mtime), vocabulary, text column."""
    h = hashlib.sha256(f"v1|{text_column}|".encode())
    for entry in entries:
        # builtin and datasets folders: hash the files they are made of
        files = corpus_files() if isinstance(entry, str) else \
            sorted(p for p in entry.rglob("*") if p.is_file()) if entry.is_dir() else [entry]
        h.update(f"{entry}|".encode())
        for f in files:
            st = f.stat()
            h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}|".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    h.update(vocab.encode())
    return h.hexdigest()[:24]


def _tokenize(entries: list[str | Path], tokenizer, text_column: str) -> np.ndarray:
    """Encode every document, joined by eos, as one int32 stream."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    pieces: list[np.ndarray] = []
    for entry in entries:
        for doc in _documents(entry, text_column):
            # Lines, batch-encoded: the fast tokenizer parallelises over a batch, not within one long string.
            lines = doc.splitlines(keepends=True)
            for i in range(0, len(lines), ENCODE_BATCH_CHUNKS):
                ids = tokenizer(lines[i:i + ENCODE_BATCH_CHUNKS], add_special_tokens=False,
                                return_attention_mask=False)["input_ids"]
                pieces.extend(np.asarray(chunk, dtype=np.int32) for chunk in ids if chunk)
            pieces.append(np.asarray(eos, dtype=np.int32))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)


def _save_atomic(array: np.ndarray, path: Path) -> None:
    # temp file in the same directory, then rename: readers never see a half-written cache entry
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.chmod(tmp, 0o644)  # mkstemp makes it private (0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_tokens(source: str | list[str], tokenizer, text_column: str = "text",
                max_tokens: int | None = None) -> torch.Tensor:
    """Token ids (1-D int64) of all documents in `source`, joined by eos; cached after the first call.

    The whole stream is cached and `max_tokens` cuts it after loading, so quick runs with different
    budgets share one cache entry.
    """
    entries = resolve_source(source)
    path = cache_dir() / "tokens" / f"{_cache_key(entries, tokenizer, text_column)}.npy"
    if path.exists():
        stream = np.load(path)
    else:
        stream = _tokenize(entries, tokenizer, text_column)
        eos_only = tokenizer.eos_token_id is not None and bool((stream == tokenizer.eos_token_id).all())
        if stream.size == 0 or eos_only:
            raise ValueError(f"data source {source!r} holds no text")
        _save_atomic(stream, path)
    if max_tokens is not None:
        stream = stream[:max_tokens]
    return torch.from_numpy(stream.astype(np.int64))


# -----------------------------------------------------------------------------
# splits and batches

@dataclass
class TokenData:
    """A token stream split into train and held-out tail."""
    train: torch.Tensor  # (N_train,) int64 token ids
    val: torch.Tensor  # (N_val,) int64 token ids, the contiguous tail of the stream
    vocab_size: int  # size of the tokenizer's vocabulary (not just the ids seen)


def split_tokens(tokens: torch.Tensor, val_fraction: float, block_size: int = 1,
                 vocab_size: int | None = None) -> TokenData:
    """Hold out the last `val_fraction` of `tokens`; each split must fit one (block_size + 1)-token window.

    Pass `vocab_size=len(tokenizer)`; the default, max id + 1, can undercount the vocabulary.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = int(len(tokens) * val_fraction)
    train, val = tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val:]
    for split, part in (("train", train), ("val", val)):
        if len(part) < block_size + 1:
            raise ValueError(f"{split} split has {len(part)} tokens, fewer than block_size + 1 = {block_size + 1}"
                             f" (val_fraction={val_fraction}, {len(tokens)} tokens in all)")
    return TokenData(train=train.long(), val=val.long(),
                     vocab_size=vocab_size if vocab_size is not None else int(tokens.max()) + 1)


def get_batch(tokens: torch.Tensor, step: int, batch_size: int, block_size: int,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows (x, y), each (batch_size, block_size) int64, y = x shifted by one token.

    The offsets come from a generator seeded by (seed, step) alone, so resuming at `step` is exact.
    """
    if len(tokens) < block_size + 1:
        raise ValueError(f"{len(tokens)} tokens cannot fill one block of block_size + 1 = {block_size + 1}")
    # Hash (seed, step) to 32 bits: the CPU generator (mt19937) ignores the high half of a 64-bit seed.
    g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(f"{seed},{step}".encode()).digest()[:4], "little"))
    offsets = torch.randint(len(tokens) - block_size, (batch_size,), generator=g)  # (B,)
    windows = tokens[offsets[:, None] + torch.arange(block_size + 1)].long()  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]


def eval_batches(tokens: torch.Tensor, num_batches: int, batch_size: int,
                 block_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed, non-overlapping (x, y) blocks from the start of `tokens`: up to num_batches, at least one."""
    n_blocks = min(num_batches * batch_size, (len(tokens) - 1) // block_size)
    if n_blocks < 1:
        raise ValueError(f"{len(tokens)} tokens cannot fill one block of block_size + 1 = {block_size + 1}")
    starts = torch.arange(n_blocks) * block_size
    windows = tokens[starts[:, None] + torch.arange(block_size + 1)].long()  # (n_blocks, T + 1)
    return [(w[:, :-1], w[:, 1:]) for w in windows.split(batch_size)]


# -----------------------------------------------------------------------------
# every data.format behind one interface: what the loop calls

RawBatch = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]  # x, y (B, T); attention mask (B, T) or None


def load_data(data_cfg, tokenizer) -> TokenData | ExampleData:
    """The training data of `data_cfg`: for text a cached token stream, split; else masked example rows.
    Bad rows and missing columns raise ValueError naming the file and row. `vocab_size` is the tokenizer's."""
    if data_cfg.format == "text":
        tokens = load_tokens(data_cfg.source, tokenizer, text_column=data_cfg.text_column,
                             max_tokens=data_cfg.max_tokens)
        return split_tokens(tokens, data_cfg.val_fraction, data_cfg.block_size, vocab_size=len(tokenizer))
    return load_examples(resolve_source(data_cfg.source), tokenizer, data_cfg)


def max_token_id(data: TokenData | ExampleData) -> int:
    if isinstance(data, TokenData):
        return int(max(data.train.max(), data.val.max()))
    return int(max(data.train.ids.max(), data.val.ids.max()))


def train_batch(data: TokenData | ExampleData, step: int, batch_size: int, block_size: int, seed: int) -> RawBatch:
    """The training batch of 0-based `step`: random text windows (no mask) or random example rows (masked)."""
    if isinstance(data, TokenData):
        return (*get_batch(data.train, step, batch_size, block_size, seed), None)
    return example_batch(data.train, step, batch_size, seed)


def held_out_batches(data: TokenData | ExampleData, num_batches: int, batch_size: int, block_size: int) -> list[RawBatch]:
    """The fixed held-out batches evaluation uses."""
    if isinstance(data, TokenData):
        return [(x, y, None) for x, y in eval_batches(data.val, num_batches, batch_size, block_size)]
    return example_eval_batches(data.val, num_batches, batch_size)
