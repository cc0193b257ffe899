"""Peak memory of whole `distill` steps at an LLM-sized vocabulary, `loss.fused=true` vs `false`.

Run from the repository root:

    python benchmarks/bench_fused_step.py                      # V = 49,152, 8 x 256 tokens a step (~3 min)
    python benchmarks/bench_fused_step.py --vocab 151936       # Qwen's vocabulary

No such model ships with the project and nothing may be downloaded, so the models are built from configs: a GPT-2
teacher (2 layers, 256 wide) and student (2 layers, 128 wide, tied embeddings) with random weights over a
--vocab-token vocabulary, trained on random token ids for --steps steps, with an evaluation at the end (the tiny
preset's other settings; teacher states not stored). Only the vocabulary is LLM-sized; the bodies stay small, so
the numbers show what the logits cost. Each mode runs in its own process; memory is the RSS high-water mark
(VmHWM) over the run above the RSS once the models and data exist (/proc/self/clear_refs resets it; Linux only).
Prints one JSON line per process and the ratio fused / logits.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from ctkd_tune import distill, load_config  # noqa: E402
from ctkd_tune.inputs.data import TokenData  # noqa: E402
from ctkd_tune.run.loop import Setup  # noqa: E402
from ctkd_tune.run.fused_step import use_fused  # noqa: E402
from ctkd_tune.run.teacher import Teacher  # noqa: E402

MB = 2**20


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(args) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = lambda layers, width: GPT2LMHeadModel(GPT2Config(  # noqa: E731
        vocab_size=args.vocab, n_positions=args.block_size, n_layer=layers, n_embd=width, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    teacher, student = gpt2(2, 256), gpt2(2, 128)
    tokens = torch.randint(0, args.vocab, (200_000,))
    data = TokenData(tokens[:180_000], tokens[180_000:], args.vocab)
    cfg = load_config(preset="tiny", overrides=[
        f"loss.fused={args.child}", f"train.steps={args.steps}", f"train.eval_every={args.steps}",
        f"train.batch_size={args.batch_size}", f"data.block_size={args.block_size}", "train.teacher_cache_mb=0",
        "train.eval_batches=1", "train.eval_cache_mb=0", "train.device=cpu"])
    fused = use_fused(cfg, teacher, student, tokens[:args.block_size][None])
    assert fused == (args.child == "true")
    setup = Setup(Teacher(teacher), student, None, data, torch.device("cpu"), fused)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS: models and data exist
    base = rss_kb("VmRSS")
    tic = time.perf_counter()
    history = distill(cfg, lambda metrics, checkpoint: None, setup=setup, progress=False).history
    seconds = time.perf_counter() - tic
    print(json.dumps({"fused": args.child, "extra_mb": round((rss_kb("VmHWM") - base) / 1024, 1),
                      "seconds": round(seconds, 1), "val_ppl": history[-1]["val/ppl"],
                      "train_loss": [round(r["train/loss"], 5) for r in history]}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary size V")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="training steps (an evaluation after the last)")
    parser.add_argument("--child", choices=["true", "false"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    results = {}
    for mode in ("false", "true"):
        cmd = [sys.executable, __file__, "--child", mode, "--vocab", str(args.vocab), "--batch-size",
               str(args.batch_size), "--block-size", str(args.block_size), "--steps", str(args.steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"loss.fused={mode} failed:\n{proc.stderr[-3000:]}")
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(results[mode]), flush=True)
    n = args.batch_size * args.block_size
    print(f"whole distill run ({args.steps} steps + 1 evaluation), V={args.vocab}, {n} tokens a step; "
          f"one ({n}, V) float32 tensor = {n * args.vocab * 4 / MB:.0f} MB")
    logits_mb, fused_mb = results["false"]["extra_mb"], results["true"]["extra_mb"]
    print(f"peak RSS above the models and data: logits path {logits_mb:.0f} MB, fused {fused_mb:.0f} MB, "
          f"ratio {fused_mb / logits_mb:.3f}")
    print(f"val/ppl after the run: logits {results['false']['val_ppl']:.4f}, fused {results['true']['val_ppl']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
