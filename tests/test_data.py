"""Tests for ctkd_tune.data: sources, the token cache, splits and deterministic batches (all on "tiny")."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from ctkd_tune import data
from ctkd_tune.embedded import builtin_tokenizer


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch) -> Path:
    """One cache dir per test module, so the tiny tokenizer is trained once here."""
    root = tmp_path_factory.getbasetemp() / "data-cache"
    monkeypatch.setenv("CTKD_TUNE_CACHE", str(root))
    return root


@pytest.fixture
def tok():
    return builtin_tokenizer("tiny")


def test_builtin_tiny_stream_and_cache_hit(tok, cache, monkeypatch):
    tokens = data.load_tokens("builtin:tiny", tok)
    assert tokens.dtype == torch.int64 and tokens.ndim == 1 and len(tokens) > 50_000
    assert int(tokens.max()) < len(tok)
    [entry] = (cache / "tokens").glob("*.npy")
    mtime = entry.stat().st_mtime_ns

    def no_tokenize(*args, **kwargs):
        raise AssertionError("cache hit must not re-tokenise")

    monkeypatch.setattr(data, "_tokenize", no_tokenize)
    again = data.load_tokens("builtin:tiny", tok)
    assert torch.equal(tokens, again) and entry.stat().st_mtime_ns == mtime
    assert torch.equal(data.load_tokens("builtin:tiny", tok, max_tokens=1000), tokens[:1000])


def test_text_sources_agree(tok, tmp_path):
    docs = ["To be, or not to be: that is the question.", "Now is the winter of our discontent."]
    (tmp_path / "a.txt").write_text(docs[0])
    (tmp_path / "b.txt").write_text(docs[1])
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(docs)) + "\n")
    parquet = tmp_path / "docs.parquet"
    pd.DataFrame({"body": docs}).to_parquet(parquet)

    eos = [tok.eos_token_id]
    expected = torch.tensor(tok(docs[0])["input_ids"] + eos + tok(docs[1])["input_ids"] + eos)
    from_txt = data.load_tokens([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], tok)
    assert torch.equal(from_txt, expected)
    assert torch.equal(data.load_tokens(str(jsonl), tok, text_column="body"), expected)
    assert torch.equal(data.load_tokens(str(parquet), tok, text_column="body"), expected)
    # the directory: a.txt, b.txt, docs.jsonl, docs.parquet in sorted order; txt files ignore text_column
    from_dir = data.load_tokens(str(tmp_path), tok, text_column="body")
    assert torch.equal(from_dir, torch.cat([expected] * 3))


def test_changed_file_is_retokenised(tok, tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("Friends, Romans, countrymen")
    first = data.load_tokens(str(path), tok)
    path.write_text("Friends, Romans, countrymen, lend me your ears")
    assert len(data.load_tokens(str(path), tok)) > len(first)


def test_source_errors(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        data.load_tokens(str(tmp_path / "nope.txt"), tok)
    (tmp_path / "rows.jsonl").write_text(json.dumps({"content": "hello"}) + "\n")
    with pytest.raises(ValueError, match="'text'.*rows.jsonl"):
        data.load_tokens(str(tmp_path / "rows.jsonl"), tok)
    pd.DataFrame({"content": ["hello"]}).to_parquet(tmp_path / "rows.parquet")
    with pytest.raises(ValueError, match="'text'.*rows.parquet"):
        data.load_tokens(str(tmp_path / "rows.parquet"), tok)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="no text"):
        data.load_tokens(str(tmp_path / "empty.txt"), tok)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="empty_dir"):
        data.load_tokens(str(tmp_path / "empty_dir"), tok)
    with pytest.raises(ValueError, match="builtin:nope"):
        data.load_tokens("builtin:nope", tok)


def test_split_sizes_and_errors():
    tokens = torch.arange(1000)
    split = data.split_tokens(tokens, val_fraction=0.1, block_size=64, vocab_size=2000)
    assert len(split.train) == 900 and len(split.val) == 100 and split.vocab_size == 2000
    assert torch.equal(torch.cat([split.train, split.val]), tokens)  # val is the contiguous tail
    with pytest.raises(ValueError, match="block_size"):
        data.split_tokens(tokens, val_fraction=0.05, block_size=64)  # 50 val tokens < 65
    with pytest.raises(ValueError, match="val_fraction"):
        data.split_tokens(tokens, val_fraction=0.0)


def test_get_batch_is_a_function_of_seed_and_step():
    tokens = torch.arange(10_000)
    x, y = data.get_batch(tokens, step=3, batch_size=4, block_size=16, seed=7)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)  # next-token labels
    x2, _ = data.get_batch(tokens, step=3, batch_size=4, block_size=16, seed=7)
    assert torch.equal(x, x2)
    torch.manual_seed(123)  # the global RNG has no say
    assert torch.equal(x, data.get_batch(tokens, step=3, batch_size=4, block_size=16, seed=7)[0])
    assert not torch.equal(x, data.get_batch(tokens, step=4, batch_size=4, block_size=16, seed=7)[0])
    assert not torch.equal(x, data.get_batch(tokens, step=3, batch_size=4, block_size=16, seed=8)[0])


def test_get_batch_reaches_the_last_token_but_not_past_it():
    tokens = torch.arange(17)  # exactly one window of block_size + 1
    x, y = data.get_batch(tokens, step=0, batch_size=3, block_size=16, seed=0)
    assert torch.equal(x[0], tokens[:16]) and torch.equal(y[0], tokens[1:])


def test_eval_batches_fixed_and_non_overlapping():
    tokens = torch.arange(1000)
    batches = data.eval_batches(tokens, num_batches=2, batch_size=3, block_size=100)
    assert [x.shape for x, _ in batches] == [(3, 100), (3, 100)]
    starts = torch.cat([x[:, 0] for x, _ in batches])
    assert starts.tolist() == [0, 100, 200, 300, 400, 500]
    assert all(torch.equal(y, x + 1) for x, y in batches)
    short = data.eval_batches(tokens[:250], num_batches=5, batch_size=4, block_size=100)
    assert len(short) == 1 and short[0][0].shape == (2, 100)  # fewer blocks when the split is short
    with pytest.raises(ValueError, match="block_size"):
        data.eval_batches(tokens[:50], num_batches=1, batch_size=1, block_size=100)
