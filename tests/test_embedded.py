"""Tests for ctkd_tune.inputs.embedded: corpus, deterministic tokenizers, the cached tiny teacher, student sizes.

The full "shakespeare" teacher takes minutes to pre-train; its test is marked `slow` and skipped unless
CTKD_TUNE_SLOW=1 (it then builds in a temporary cache, never the user's).
"""
import json
import os
import threading
import time
from pathlib import Path

import pytest

from ctkd_tune.inputs import cache as cache_mod
from ctkd_tune.inputs import data, embedded


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch) -> Path:
    """One cache dir per test module: the tiny teacher is pre-trained once, then every test reuses it."""
    root = tmp_path_factory.getbasetemp() / "embedded-cache"
    monkeypatch.setenv("CTKD_TUNE_CACHE", str(root))
    return root


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CTKD_TUNE_CACHE", str(tmp_path))
    assert cache_mod.cache_dir() == tmp_path
    monkeypatch.delenv("CTKD_TUNE_CACHE")
    assert cache_mod.cache_dir() == Path.home() / ".cache" / "ctkd-tune"


def test_corpus():
    files = embedded.corpus_files()
    assert len(files) == 42 and files == sorted(files) and all(f.name.endswith("_gut.txt") for f in files)
    tiny = "".join(embedded.corpus_documents("tiny"))
    assert 300_000 <= len(tiny) < 301_000 and tiny.endswith("\n")
    with pytest.raises(ValueError, match="nope"):
        embedded.corpus_documents("nope")


@pytest.mark.parametrize("name, vocab", [("tiny", 512), ("shakespeare", 8192)])
def test_tokenizer_round_trip_and_cache(name, vocab, cache):
    tok = embedded.builtin_tokenizer(name)
    assert len(tok) == vocab and tok.eos_token == embedded.EOS_TOKEN and tok.pad_token_id == tok.eos_token_id
    text = "To be, or not to be: that is the question.\n  Whether 'tis nobler — in the mind"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: even unseen characters survive
    assert (cache / "tokenizers" / name / "tokenizer.json").is_file()
    assert embedded.builtin_tokenizer(name).backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


def test_tokenizer_training_is_deterministic():
    first = embedded._train_tokenizer("tiny").backend_tokenizer.to_str()
    assert embedded._train_tokenizer("tiny").backend_tokenizer.to_str() == first


def test_tiny_teacher_builds_once_and_learned_something(cache):
    t0 = time.time()
    model, tok = embedded.builtin_teacher("tiny")
    built_in = time.time() - t0
    path = cache / "teachers" / "tiny"
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    info = json.loads((path / "teacher.json").read_text())
    assert info["steps"] == embedded.RECIPES["tiny"].steps and info["seed"] == embedded.RECIPES["tiny"].seed
    # a random-init model sits near ppl = vocab (512); a useful tiny teacher is far below it
    assert info["heldout_ppl"] < 100, info
    assert not model.training and model.config.vocab_size == len(tok) == 512
    print(f"tiny teacher: {info['heldout_ppl']} held-out ppl, {info['wall_time_s']} s training, {built_in:.1f} s total")

    mtime = (path / "teacher.json").stat().st_mtime_ns
    t0 = time.time()
    again, _ = embedded.builtin_teacher("tiny")
    assert time.time() - t0 < 5 and (path / "teacher.json").stat().st_mtime_ns == mtime  # loaded, not rebuilt
    split = data.split_tokens(data.load_tokens("builtin:tiny", tok), 0.05, 128, len(tok))
    ppl = embedded.heldout_ppl(again, data.eval_batches(split.val, 16, 8, 128))
    assert abs(ppl - info["heldout_ppl"]) < 0.05 * info["heldout_ppl"]


def test_build_once_is_atomic_and_builds_once(tmp_path):
    target = tmp_path / "entry"

    def crash(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        cache_mod.build_once(target, crash)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.lock"]  # no half entry, no temp dir left

    calls = []

    def slow_build(tmp: Path) -> None:
        calls.append(tmp)
        time.sleep(0.2)
        (tmp / "ok").write_text("1")

    threads = [threading.Thread(target=cache_mod.build_once, args=(target, slow_build)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and (target / "ok").read_text() == "1"  # the waiters found it built

    # a stale entry (`ready` says no) is replaced whole
    cache_mod.build_once(target, lambda tmp: (tmp / "new").write_text("2"), ready=lambda p: (p / "new").exists())
    assert sorted(p.name for p in target.iterdir()) == ["new"]


@pytest.mark.parametrize("name", embedded.BUILTIN_NAMES)
def test_student_is_about_a_quarter_of_the_teacher(name):
    from transformers import GPT2LMHeadModel

    r = embedded.RECIPES[name]
    student = embedded.builtin_student_config(name)
    teacher = embedded._gpt2_config(student.vocab_size, student.eos_token_id, r.n_layer, r.n_embd, r.n_head)
    ratio = GPT2LMHeadModel(student).num_parameters() / GPT2LMHeadModel(teacher).num_parameters()
    assert 0.15 < ratio < 0.35, ratio
    assert student.vocab_size == teacher.vocab_size and student.n_positions == teacher.n_positions


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown builtin name 'gpt5'"):
        embedded.builtin_teacher("gpt5")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CTKD_TUNE_SLOW") != "1", reason="pre-trains for minutes; set CTKD_TUNE_SLOW=1")
def test_shakespeare_teacher_meets_target():
    path = embedded.build_teacher("shakespeare")
    info = json.loads((path / "teacher.json").read_text())
    assert info["heldout_ppl"] <= 200 and info["wall_time_s"] <= 600, info
