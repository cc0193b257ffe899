"""Instruction data: prompt/response and chat examples → fixed-length blocks whose loss counts response tokens only.

`data.format`:
    prompt_response   two columns (`data.prompt_column`, `data.response_column`); the response ends with eos
    chat              a `data.messages_column` of [{"role": ..., "content": ...}, ...], rendered with the
                      tokenizer's chat template; the assistant messages' tokens are the response
Sources are .jsonl, .parquet and Hugging Face `datasets` directories written by `save_to_disk`. Each example is
tokenised once; the held-out split is the last `val_fraction` of the examples. Rows are `block_size + 1` tokens:
with `data.packing` whole examples are packed into a row until the next would not fit (no example is split across
rows; one longer than a row is cut at its end), else each example gets its own row. The rest of a row is padding.

    blocks = load_examples("chat.jsonl", tokenizer, cfg.data)      # ExampleData(train, val, vocab_size)
    x, y, attention_mask = example_batch(blocks.train, step=0, batch_size=8, seed=0)
    # x, attention_mask: (8, block_size); y: (8, block_size) with IGNORE_INDEX where the loss must not look
Inside a packed row, examples attend to the examples before them (as in TRL's packing); padding attends to nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

IGNORE_INDEX = -100  # label of tokens no loss looks at (prompt, padding): the convention of F.cross_entropy and HF


class DataError(ValueError):
    """A malformed example; the message names the file and row."""


@dataclass
class Blocks:
    """Examples laid out in rows of block_size + 1 tokens."""
    ids: torch.Tensor  # (N, T + 1) int64 token ids, padding = pad id
    response: torch.Tensor  # (N, T + 1) bool: the token belongs to a response (the loss predicts it)
    real: torch.Tensor  # (N, T + 1) bool: not padding


@dataclass
class ExampleData:
    """Train and held-out blocks of instruction data (the `TokenData` of `data.format` ≠ text)."""
    train: Blocks
    val: Blocks
    vocab_size: int
    dropped: int  # examples whose response did not fit a row at all


# -----------------------------------------------------------------------------
# files -> rows

def is_datasets_dir(path: Path) -> bool:
    """A folder written by `datasets`' save_to_disk (a Dataset or a DatasetDict)."""
    return path.is_dir() and any((path / name).is_file() for name in ("dataset_info.json", "dataset_dict.json"))


def read_rows(entry: Path, columns: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) of a .jsonl, .parquet or datasets entry; `where` is "FILE line N" / "FILE row N"."""
    if entry.suffix == ".jsonl":
        with open(entry, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(f"{entry} line {lineno}: not valid JSON ({err.msg})") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{entry} line {lineno}: expected a JSON object, got {type(row).__name__}")
                    yield f"{entry} line {lineno}", row
        return
    if entry.suffix == ".parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(entry).names
        rows = pq.read_table(entry, columns=[c for c in columns if c in names]).to_pylist()
    elif is_datasets_dir(entry):
        dataset = _load_dataset(entry)
        rows = dataset.select_columns([c for c in columns if c in dataset.column_names])
    else:
        raise DataError(f"unsupported data source {entry}: expected .jsonl, .parquet or a datasets directory")
    for i, row in enumerate(rows, 1):
        yield f"{entry} row {i}", row


def _load_dataset(path: Path):
    """A save_to_disk folder: the Dataset, or the `train` (or only) split of a DatasetDict."""
    from datasets import Dataset, load_from_disk

    dataset = load_from_disk(str(path))
    if not isinstance(dataset, Dataset):
        splits = list(dataset)
        if "train" not in splits and len(splits) != 1:
            raise DataError(f"{path}: a DatasetDict with splits {', '.join(splits)}; expected 'train' or one split")
        dataset = dataset["train" if "train" in splits else splits[0]]
    return dataset


# -----------------------------------------------------------------------------
# rows -> token ids with a response mask

def encode_prompt_response(row: dict, where: str, tokenizer, prompt_column: str,
                           response_column: str) -> tuple[list[int], list[bool]]:
    """prompt tokens (not counted) + response tokens + eos (counted)."""
    for column in (prompt_column, response_column):
        if column not in row:
            raise DataError(f"{where}: column {column!r} missing")
        if not isinstance(row[column], str):
            raise DataError(f"{where}: column {column!r} must be text, got {type(row[column]).__name__}")
    if not row[response_column].strip():
        raise DataError(f"{where}: empty response")
    prompt = tokenizer(row[prompt_column], add_special_tokens=False)["input_ids"]
    response = tokenizer(row[response_column], add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response = response + [tokenizer.eos_token_id]
    return prompt + response, [False] * len(prompt) + [True] * len(response)


def encode_chat(row: dict, where: str, tokenizer, messages_column: str) -> tuple[list[int], list[bool]]:
    """The chat template's rendering; an assistant message's content and closing tokens are counted, its header not.

    Message i's text is render(messages[:i+1]) minus render(messages[:i]); for an assistant message the header is
    what the generation prompt adds (render(messages[:i], add_generation_prompt=True)). Needs a template whose
    rendering of a conversation starts with the rendering of its beginning, as the common ones do.
    """
    messages = row.get(messages_column)
    if messages_column not in row:
        raise DataError(f"{where}: column {messages_column!r} missing")
    if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages)):
        raise DataError(f"{where}: {messages_column!r} must be a non-empty list of {{role, content}} messages")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise DataError(f"{where}: no assistant message with content (nothing to learn)")
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    render = lambda msgs, gen=False: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) \
        if msgs else ""
    ids: list[int] = []
    counted: list[bool] = []
    before = ""
    for i, message in enumerate(messages):
        text = render(messages[: i + 1])
        header_end = render(messages[:i], gen=True) if message["role"] == "assistant" else text
        if not (text.startswith(before) and header_end.startswith(before) and text.startswith(header_end)):
            raise DataError(f"{where}: the chat template does not render a conversation as the rendering of its "
                            "beginning plus the next message; cannot tell the response tokens apart")
        for piece, is_response in ((header_end[len(before):], False), (text[len(header_end):], True)):
            if piece:
                piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += piece_ids
                counted += [is_response] * len(piece_ids)
        before = text
    return ids, counted


# -----------------------------------------------------------------------------
# examples -> blocks

def pack_blocks(examples: list[tuple[list[int], list[bool]]], block_size: int, pad_id: int,
                packing: bool) -> tuple[Blocks, int]:
    """Rows of block_size + 1 tokens (see the module docstring) and the number of examples dropped.

    An example longer than a row is cut at the end of the row; one left without a counted token is dropped.
    """
    width = block_size + 1
    rows: list[tuple[list[int], list[bool]]] = []
    ids: list[int] = []
    counted: list[bool] = []
    dropped = 0
    for ex_ids, ex_counted in examples:
        ex_ids, ex_counted = ex_ids[:width], ex_counted[:width]
        if not any(ex_counted[1:]):  # the first token of a row is never predicted
            dropped += 1
            continue
        if ids and (not packing or len(ids) + len(ex_ids) > width):
            rows.append((ids, counted))
            ids, counted = [], []
        ids, counted = ids + ex_ids, counted + ex_counted
    if ids:
        rows.append((ids, counted))
    n = len(rows)
    out = Blocks(ids=torch.full((n, width), pad_id, dtype=torch.long),
                 response=torch.zeros(n, width, dtype=torch.bool), real=torch.zeros(n, width, dtype=torch.bool))
    for r, (row_ids, row_counted) in enumerate(rows):
        out.ids[r, : len(row_ids)] = torch.tensor(row_ids)
        out.response[r, : len(row_ids)] = torch.tensor(row_counted)
        out.real[r, : len(row_ids)] = True
    return out, dropped


def load_examples(entries: list[Path], tokenizer, data_cfg) -> ExampleData:
    """Tokenise every example of `entries` (resolved sources), split off the held-out tail, lay both out in rows."""
    columns = [data_cfg.prompt_column, data_cfg.response_column] if data_cfg.format == "prompt_response" \
        else [data_cfg.messages_column]
    if data_cfg.format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise DataError("data.format is 'chat' but the teacher's tokenizer has no chat template")
    examples = []
    for entry in entries:
        if isinstance(entry, str) or entry.suffix == ".txt":
            raise DataError(f"data.format {data_cfg.format!r} reads .jsonl, .parquet or datasets directories, "
                            f"not {entry}")
        for where, row in read_rows(entry, columns):
            if data_cfg.format == "prompt_response":
                examples.append(encode_prompt_response(row, where, tokenizer, *columns))
            else:
                examples.append(encode_chat(row, where, tokenizer, columns[0]))
    if len(examples) < 2:
        raise DataError(f"data.source holds {len(examples)} example(s): need at least 2 (train and held-out)")
    n_val = max(1, int(len(examples) * data_cfg.val_fraction))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    train, dropped_train = pack_blocks(examples[: len(examples) - n_val], data_cfg.block_size, pad_id,
                                       data_cfg.packing)
    val, dropped_val = pack_blocks(examples[len(examples) - n_val:], data_cfg.block_size, pad_id, data_cfg.packing)
    for split, blocks in (("train", train), ("held-out", val)):
        if len(blocks.ids) == 0:
            raise DataError(f"no {split} example has a response token within data.block_size "
                            f"({data_cfg.block_size}); raise it")
    return ExampleData(train, val, vocab_size=len(tokenizer), dropped=dropped_train + dropped_val)


# -----------------------------------------------------------------------------
# blocks -> batches

def _split(rows: Blocks, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, response, real = rows.ids[index], rows.response[index], rows.real[index]  # (B, T + 1) each
    y = torch.where(response[:, 1:], ids[:, 1:], IGNORE_INDEX)
    return ids[:, :-1], y, real[:, :-1].long()


def example_batch(rows: Blocks, step: int, batch_size: int, seed: int):
    """(x, y, attention_mask) of `batch_size` random rows, a pure function of (seed, step) like `get_batch`."""
    digest = hashlib.sha256(f"{seed},{step}".encode()).digest()[:4]
    g = torch.Generator().manual_seed(int.from_bytes(digest, "little"))
    return _split(rows, torch.randint(len(rows.ids), (batch_size,), generator=g))


def example_eval_batches(rows: Blocks, num_batches: int, batch_size: int):
    """The first num_batches × batch_size held-out rows, in order, as (x, y, attention_mask) batches."""
    index = torch.arange(min(len(rows.ids), num_batches * batch_size))
    return [_split(rows, part) for part in index.split(batch_size)]
