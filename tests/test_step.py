"""The step interface (`ctkd_tune.run.step`): a `Batch` built once, and one contract for both `Step` implementations
(the logits path `LogitsStep`, the fused path `FusedStep`); how a run's summary says it ended (`RunStatus`).

Run: python -m pytest tests/test_step.py
"""

import json

import pytest
import torch

from ctkd_tune import distill, load_config, prepare
from ctkd_tune.inputs.data import held_out_batches, train_batch
from ctkd_tune.inputs.instruct import IGNORE_INDEX
from ctkd_tune.run.fused_step import FusedStep
from ctkd_tune.run.loop import Trained, make_step
from ctkd_tune.run.step import Batch, LogitsStep, StepResult
from ctkd_tune.run.summary import RunStatus

QUIET = dict(report=lambda metrics, checkpoint: None, progress=False)
PATHS = {"false": LogitsStep, "true": FusedStep}


def test_a_batch_counts_every_text_token_and_only_the_response_tokens_of_instruction_data():
    x = torch.tensor([[5, 6, 7], [8, 9, 10]])
    text = Batch.on(torch.device("cpu"), 3, x, x + 1)
    assert text.index == 3 and text.counted.all() and text.loss_mask is None  # text: the losses' unmasked path
    y = torch.tensor([[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, 10]])
    rows = Batch.on(torch.device("cpu"), 0, x, y, torch.ones_like(x))
    assert rows.counted.tolist() == [[False, True, True], [False, False, True]]
    assert rows.loss_mask is rows.counted
    with pytest.raises(AttributeError):  # frozen: built once where the batch is cut
        rows.x = x


def instruction_config(tmp_path, fused, granularity):
    rows = [{"prompt": f"q{i} the king?", "response": " ".join(["and the queen"] * (1 + i % 3))} for i in range(30)]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return load_config(preset="tiny", overrides=[
        f"loss.fused={fused}", f"temperature.granularity={granularity}", f"data.source={source}",
        "data.format=prompt_response", "data.packing=false", "data.block_size=24", "data.val_fraction=0.2",
        "loss.align_weight=0.5", "train.steps=4"])


@pytest.mark.parametrize("granularity", ["global", "token"])
def test_both_paths_keep_one_contract_and_agree_on_a_batch(tmp_path, granularity):
    results, metrics = {}, {}
    for fused, kind in PATHS.items():
        cfg = instruction_config(tmp_path, fused, granularity)
        setup = prepare(cfg)
        path = make_step(cfg, setup, Trained.build(cfg, setup))
        assert type(path) is kind
        t = cfg.train
        batch = Batch.on(setup.device, 0, *train_batch(setup.data, 0, t.batch_size, cfg.data.block_size, 0))
        out = path.loss(batch, lam=0.5)
        assert isinstance(out, StepResult) and out.loss.dim() == out.kd.dim() == out.ce.dim() == 0
        # τ as logged: one value, or one per counted (response) token
        assert out.tau.shape == (() if granularity == "global" else (int(batch.counted.sum()),))
        results[fused] = out
        held_out = [Batch.on(setup.device, i, *b) for i, b in
                    enumerate(held_out_batches(setup.data, t.eval_batches, t.batch_size, cfg.data.block_size))]
        metrics[fused] = path.evaluate(held_out, with_teacher=True)
    a, b = results["true"], results["false"]
    for name in ("loss", "kd", "ce"):
        assert getattr(a, name).item() == pytest.approx(getattr(b, name).item(), rel=1e-4), name
    assert torch.allclose(a.tau, b.tau, rtol=1e-5)
    assert metrics["true"].keys() == metrics["false"].keys() >= {"val/loss", "val/ppl", "val/kl",
                                                                 "val/top1_agreement", "teacher/ppl"}
    for key, want in metrics["false"].items():
        assert metrics["true"][key] == pytest.approx(want, rel=1e-4), key


def test_the_summary_keeps_the_status_and_the_stop_reason_apart():
    done = distill(load_config(preset="tiny", overrides=["train.steps=2"]), **QUIET).summary
    assert done["status"] is RunStatus.COMPLETED and done["stop_reason"] is None
    blown = distill(load_config(preset="tiny", overrides=["train.steps=30", "train.lr=1e4", "train.grad_clip=0"]),
                    **QUIET).summary
    assert blown["status"] is RunStatus.DIVERGED and blown["stop_reason"].startswith("diverged at step")
    assert json.loads(json.dumps(blown))["status"] == "diverged"  # the JSON keeps the plain string
