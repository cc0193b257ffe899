"""The loop's fused path (`ctkd_tune.run.fused_step`, `loss.fused`): the same run as the logits path, on the teacher's
forward and on stored teacher states; which models may take it; the config field.

Run: python -m pytest tests/test_fused_step.py
"""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from ctkd_tune import distill, load_config, prepare
from ctkd_tune.run import teacher_states as ts
from ctkd_tune.config import ConfigError
from ctkd_tune.run.fused_step import fused_blocker, use_fused

QUIET = dict(report=lambda metrics, checkpoint: None, progress=False)


def tiny(*overrides):
    return load_config(preset="tiny", overrides=["train.steps=30", "train.eval_every=10", *overrides])


def val_ppl(history):
    return {row["step"]: row["val/ppl"] for row in history if "val/ppl" in row}


def assert_same_run(*overrides, keys=("train/kd_loss", "train/ce_loss", "ctkd/temperature", "val/kl",
                                     "val/top1_agreement")):
    """loss.fused=true and false on the tiny preset with `overrides`: the same val/ppl at every evaluation (1e-4)
    and the same `keys` at every step."""
    runs = {}
    for fused in ("true", "false"):
        cfg = tiny(f"loss.fused={fused}", *overrides)
        setup = prepare(cfg)
        assert setup.fused == (fused == "true")
        runs[fused] = distill(cfg, setup=setup, **QUIET).history
    ppl_fused, ppl_logits = val_ppl(runs["true"]), val_ppl(runs["false"])
    assert ppl_fused.keys() == ppl_logits.keys() and len(ppl_fused) >= 4
    for step, want in ppl_logits.items():
        assert ppl_fused[step] == pytest.approx(want, rel=1e-4), step
    for a, b in zip(runs["true"], runs["false"]):  # every step's losses and temperature, too
        for key in keys:
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)


@pytest.mark.parametrize("granularity, divergence", [("global", "forward_kl"), ("token", "forward_kl"),
                                                     ("global", "jsd")])
def test_fused_and_logits_paths_give_the_same_run(granularity, divergence):
    assert_same_run(f"temperature.granularity={granularity}", "train.teacher_cache_mb=0",
                    f"loss.divergence={divergence}")


@pytest.mark.parametrize("granularity", ["global", "token"])
def test_instruction_data_takes_the_fused_path_with_the_same_run(tmp_path, granularity):
    """Prompt/response rows, padded with attention masks: KD, CE and the reported τ over the response tokens only,
    on both paths; the same losses, temperature and held-out numbers at every step."""
    words = "the king and the queen of love hath said to me a word".split()
    rows = [{"prompt": " ".join(words[i % 7:i % 7 + 3]) + "?", "response": " ".join(words[(i * 5) % 9:(i * 5) % 9 + 2 + i % 4])}
            for i in range(40)]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert_same_run(f"temperature.granularity={granularity}", f"data.source={source}", "data.format=prompt_response",
                    "data.packing=false", "data.block_size=24", "data.val_fraction=0.2", "loss.align_weight=0.5",
                    keys=("train/loss", "train/kd_loss", "train/ce_loss", "ctkd/temperature", "val/kl",
                          "val/top1_agreement"))


def test_a_trial_on_stored_teacher_states_gives_the_same_run(tmp_path, monkeypatch):
    """As a search trial: the driver stored the teacher's hidden states; the fused trial reads them directly."""
    monkeypatch.setattr(ts, "_entries", lambda: tmp_path / "teacher-states")
    runs = {}
    for fused in ("true", "false"):
        cfg = tiny(f"loss.fused={fused}")
        setup = prepare(cfg)
        ts.build(cfg, setup.teacher, setup.data, log=lambda line: None)
        hits = []
        real = ts.StoredStates.last_hidden
        monkeypatch.setattr(ts.StoredStates, "last_hidden",
                            lambda self, step, x: hits.append(step) or real(self, step, x))
        runs[fused] = distill(cfg, setup=setup, **QUIET).history
        assert hits == list(range(cfg.train.steps))  # every training step came from the stored states
        monkeypatch.setattr(ts.StoredStates, "last_hidden", real)
    ppl_fused, ppl_logits = val_ppl(runs["true"]), val_ppl(runs["false"])
    assert ppl_fused.keys() == ppl_logits.keys()
    for step, want in ppl_logits.items():
        assert ppl_fused[step] == pytest.approx(want, rel=1e-4), step


def tiny_gpt2(**config):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_layer=1, n_embd=8, n_head=2, **config))


def test_which_models_can_take_the_fused_path():
    ids = torch.randint(0, 50, (1, 8))
    assert fused_blocker(tiny_gpt2(), ids) is None
    capped = tiny_gpt2()
    capped.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping=30.0" in fused_blocker(capped, ids)
    scaled = tiny_gpt2()  # logits changed after the head, with nothing in the config to say so
    scaled.register_forward_hook(lambda module, args, out: out.__setitem__("logits", out.logits * 2.0) or out)
    assert "not the output head applied to the last hidden state" in fused_blocker(scaled, ids)
    other_head = tiny_gpt2()
    other_head.lm_head = torch.nn.Sequential(other_head.lm_head)
    assert "not an nn.Linear" in fused_blocker(other_head, ids)


def test_loss_fused_true_on_a_model_that_cannot_is_a_config_error_and_auto_falls_back():
    ids = torch.randint(0, 50, (1, 8))
    capped = tiny_gpt2()
    capped.config.final_logit_softcapping = 30.0
    with pytest.raises(ConfigError, match=r"loss.fused=true, but the student \(derived from the teacher\)"):
        use_fused(tiny("loss.fused=true"), tiny_gpt2(), capped, ids)
    said = []
    assert use_fused(tiny(), tiny_gpt2(), capped, ids, log=said.append) is False
    assert len(said) == 1 and "\n" not in said[0] and "logits path" in said[0] and "softcapping" in said[0]
    assert use_fused(tiny(), tiny_gpt2(), tiny_gpt2(), ids, log=said.append) is True
    assert use_fused(tiny("loss.fused=false"), tiny_gpt2(), capped, ids, log=said.append) is False
    assert len(said) == 1  # nothing to say when it is asked for or works


def test_loss_fused_config_field():
    assert tiny().loss.fused == "auto"
    assert tiny("loss.fused=true").loss.fused == "true"  # YAML reads true as a bool; the field keeps the word
    assert tiny("loss.fused=false").loss.fused == "false"
    with pytest.raises(ConfigError, match="loss.fused must be one of auto, true, false"):
        tiny("loss.fused=maybe")
    with pytest.raises(ConfigError, match="loss.fused_chunk_mb must be >= 0"):
        tiny("loss.fused_chunk_mb=-1")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_and_logits_paths_agree_on_cuda():
    """On CUDA (bf16 autocast) both paths round differently; their val/ppl stay within 2% over 30 steps."""
    runs = {fused: distill(tiny(f"loss.fused={fused}", "train.device=cuda", "train.teacher_cache_mb=0"),
                           **QUIET).history for fused in ("true", "false")}
    ppl_fused, ppl_logits = val_ppl(runs["true"]), val_ppl(runs["false"])
    assert ppl_fused.keys() == ppl_logits.keys()
    for step, want in ppl_logits.items():
        assert ppl_fused[step] == pytest.approx(want, rel=2e-2), step
