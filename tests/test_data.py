"""Tests for ctkd_tune.inputs.data: sources, the token cache, splits and deterministic batches (all on "tiny")."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from ctkd_tune.inputs import data
from ctkd_tune.inputs.embedded import builtin_tokenizer


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


# -----------------------------------------------------------------------------
# instruction data: prompt_response and chat, masks, packing, sources, bad rows

from ctkd_tune.config import DataConfig  # noqa: E402
from ctkd_tune.inputs.instruct import IGNORE_INDEX, DataError, encode_chat, example_batch, load_examples, pack_blocks  # noqa: E402

PAIRS = [("What is love?", "Baby don't hurt me."), ("Say hi.", "Hi."), ("Count to three.", "One, two, three."),
         ("Name a colour.", "Blue."), ("Who wrote Hamlet?", "Shakespeare did.")]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture
def chat_tok():
    tok = builtin_tokenizer("tiny")
    tok.chat_template = TEMPLATE
    return tok


def _cfg(**kw) -> DataConfig:
    return DataConfig(**{"format": "prompt_response", "block_size": 48, "val_fraction": 0.2, **kw})


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_prompt_response_counts_the_response_and_eos_only(tok, tmp_path):
    source = _write_jsonl(tmp_path / "pr.jsonl", [{"prompt": p, "response": r} for p, r in PAIRS])
    ex = load_examples(data.resolve_source(source), tok, _cfg(packing=False))
    prompt, response = tok(PAIRS[0][0])["input_ids"], tok(PAIRS[0][1])["input_ids"] + [tok.eos_token_id]
    n = len(prompt) + len(response)
    assert ex.train.ids[0, :n].tolist() == prompt + response
    assert ex.train.response[0, :n].tolist() == [False] * len(prompt) + [True] * len(response)
    assert not ex.train.real[0, n:].any() and not ex.train.response[0, n:].any()  # padding
    x, y, attention = example_batch(ex.train, step=0, batch_size=3, seed=0)
    assert x.shape == y.shape == attention.shape == (3, 48)
    # labels: the next token where it is a response token, IGNORE_INDEX elsewhere (prompt and padding)
    counted = y != IGNORE_INDEX
    assert counted.sum(1).tolist() == [int(ex.train.response[i, 1:].sum()) for i in
                                       torch.randint(len(ex.train.ids), (3,), generator=torch.Generator()
                                                     .manual_seed(int.from_bytes(__import__("hashlib").sha256(b"0,0")
                                                                                 .digest()[:4], "little")))]
    assert (attention.bool() | ~counted).all()  # every counted label sits on a real (attended) position


def test_packing_keeps_examples_whole_and_fills_rows_in_order():
    examples = [([1] * 5, [False] * 2 + [True] * 3), ([2] * 6, [False] * 3 + [True] * 3),
                ([3] * 4, [False, True, True, True]), ([4] * 20, [False] * 2 + [True] * 18)]
    blocks, dropped = pack_blocks(examples, block_size=11, pad_id=0, packing=True)  # rows of 12 tokens
    assert dropped == 0
    assert blocks.ids[0].tolist() == [1] * 5 + [2] * 6 + [0]  # 3s (4 tokens) do not fit the 1 left: next row
    assert blocks.ids[1].tolist() == [3] * 4 + [0] * 8  # the 20-token example does not fit after them
    assert blocks.ids[2].tolist() == [4] * 12  # longer than a row: cut at the row's end
    assert blocks.real.sum(1).tolist() == [11, 4, 12]
    unpacked, _ = pack_blocks(examples, block_size=11, pad_id=0, packing=False)
    assert len(unpacked.ids) == 4 and unpacked.real.sum(1).tolist() == [5, 6, 4, 12]
    # an example whose response starts past the row is dropped, not trained on as prompt only
    _, dropped = pack_blocks([([5] * 30, [False] * 25 + [True] * 5)], block_size=11, pad_id=0, packing=True)
    assert dropped == 1


def test_chat_template_rendering_marks_assistant_content_only(chat_tok):
    messages = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "good day"},
                {"role": "user", "content": "and again"}, {"role": "assistant", "content": "farewell"}]
    ids, counted = encode_chat({"messages": messages}, "x.jsonl line 1", chat_tok, "messages")
    rendered = chat_tok.apply_chat_template(messages, tokenize=False)
    assert rendered == "<|user|>hello there\n<|assistant|>good day\n<|user|>and again\n<|assistant|>farewell\n"
    assert chat_tok.decode(ids) == chat_tok.decode(chat_tok(rendered, add_special_tokens=False)["input_ids"])
    response_text = chat_tok.decode([i for i, c in zip(ids, counted) if c])
    assert response_text.replace(" ", "") == "goodday\nfarewell\n".replace(" ", "")
    assert "user" not in response_text and "assistant" not in response_text


def test_every_source_gives_the_same_examples(chat_tok, tmp_path):
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]} for p, r in PAIRS]
    jsonl = _write_jsonl(tmp_path / "chat.jsonl", rows)
    parquet = tmp_path / "chat.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    from datasets import Dataset, DatasetDict

    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dsdict"))
    cfg = _cfg(format="chat")
    loaded = [load_examples(data.resolve_source(s), chat_tok, cfg)
              for s in (jsonl, str(parquet), str(tmp_path / "ds"), str(tmp_path / "dsdict"))]
    for other in loaded[1:]:
        for split in ("train", "val"):
            for field in ("ids", "response", "real"):
                assert torch.equal(getattr(getattr(other, split), field), getattr(getattr(loaded[0], split), field))
    assert len(loaded[0].val.ids) == 1 and loaded[0].train.response.any()
    # text format reads a datasets folder too
    Dataset.from_list([{"text": p} for p, _ in PAIRS]).save_to_disk(str(tmp_path / "texts"))
    assert len(data.load_tokens(str(tmp_path / "texts"), chat_tok)) > 10


@pytest.mark.parametrize("rows, fmt, message", [
    ([{"prompt": "a", "response": "b"}, {"prompt": "a"}], "prompt_response", r"line 2: column 'response' missing"),
    ([{"prompt": "a", "response": "b"}, {"prompt": "a", "response": "  "}], "prompt_response", r"line 2: empty response"),
    ([{"response": "b"}], "prompt_response", r"line 1: column 'prompt' missing"),
    ([{"messages": "hi"}], "chat", r"line 1: 'messages' must be a non-empty list of \{role, content\} messages"),
    ([{"messages": [{"role": "user"}]}], "chat", r"line 1: 'messages' must be a non-empty list"),
    ([{"messages": [{"role": "user", "content": "x"}]}], "chat", r"line 1: no assistant message"),
])
def test_bad_rows_name_file_and_row(chat_tok, tmp_path, rows, fmt, message):
    source = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message) as err:
        load_examples(data.resolve_source(source), chat_tok, _cfg(format=fmt))
    assert "bad.jsonl" in str(err.value) and "\n" not in str(err.value)


def test_bad_parquet_row_and_missing_template(tok, tmp_path):
    parquet = tmp_path / "pr.parquet"
    pd.DataFrame({"prompt": ["a", "b", "c"], "response": ["x", "", "z"]}).to_parquet(parquet)
    with pytest.raises(DataError, match=r"pr.parquet row 2: empty response"):
        load_examples([parquet], tok, _cfg())
    with pytest.raises(DataError, match="no chat template"):
        load_examples([parquet], tok, _cfg(format="chat"))


# -----------------------------------------------------------------------------
# the loop's losses see only the counted (response) tokens

def _tiny_lm(seed: int, vocab: int = 40):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=32, n_layer=1, n_embd=16, n_head=2,
                                      bos_token_id=0, eos_token_id=0)).eval()


def _losses(student, teacher, x, y, attention, tau=2.0):
    from ctkd_tune.run.step import counted_losses

    mask = y != IGNORE_INDEX
    return counted_losses(student(x, attention_mask=attention).logits, teacher(x, attention_mask=attention).logits,
                          y, torch.tensor(tau), mask, chunk_size=7)


def _blocks(examples, block_size=15):
    blocks, _ = pack_blocks(examples, block_size=block_size, pad_id=0, packing=False)
    from ctkd_tune.inputs.instruct import _split

    return _split(blocks, torch.arange(len(blocks.ids)))


@torch.no_grad()
def test_masked_losses_equal_the_losses_on_response_tokens_alone():
    from ctkd_tune.core.losses import kd_loss_reference

    student, teacher = _tiny_lm(0), _tiny_lm(1)
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(1, 40, (n,), generator=g).tolist() for n in (9, 12)]
    examples = [(ids[0], [False] * 4 + [True] * 5), (ids[1], [False] * 7 + [True] * 5)]
    x, y, attention = _blocks(examples)
    kd, ce = _losses(student, teacher, x, y, attention)
    # by hand: the logits at the positions whose label counts, and nothing else
    mask = y != IGNORE_INDEX
    s_logits, t_logits = student(x, attention_mask=attention).logits[mask], teacher(x, attention_mask=attention).logits[mask]
    assert mask.sum() == 5 + 5  # every response token is a label (the first one predicted from the prompt's last)
    assert torch.allclose(kd, kd_loss_reference(s_logits, t_logits, torch.tensor(2.0)), atol=1e-6)
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(s_logits, y[mask]), atol=1e-6)


@torch.no_grad()
def test_prompt_only_examples_and_padding_contribute_nothing():
    student, teacher = _tiny_lm(0), _tiny_lm(1)
    g = torch.Generator().manual_seed(1)
    a = torch.randint(1, 40, (10,), generator=g).tolist()
    b = torch.randint(1, 40, (13,), generator=g).tolist()
    with_response = (a, [False] * 5 + [True] * 5)
    x1, y1, att1 = _blocks([with_response])
    # + a prompt-only row: all its labels ignored (pack_blocks drops such examples; a batch must not care either)
    x2 = torch.cat([x1, torch.tensor([b + [0] * (x1.shape[1] - len(b))])])
    y2 = torch.cat([y1, torch.full_like(y1, IGNORE_INDEX)])
    att2 = torch.cat([att1, (torch.arange(x1.shape[1]) < len(b)).long()[None]])
    for one, two in zip(_losses(student, teacher, x1, y1, att1), _losses(student, teacher, x2, y2, att2)):
        assert torch.allclose(one, two, atol=1e-6)
    # padding: any token ids under attention_mask 0 change nothing
    noisy = torch.where(att1.bool(), x1, torch.randint(1, 40, x1.shape, generator=g))
    assert not torch.equal(noisy, x1)
    for one, two in zip(_losses(student, teacher, x1, y1, att1), _losses(student, teacher, noisy, y1, att1)):
        assert torch.allclose(one, two, atol=1e-6)
