"""A run on stored teacher states with the teacher's head only vs with the whole teacher: peak memory and start-up.

Run from the repository root:

    python benchmarks/bench_head_only.py                 # a GPT-2-small-sized teacher (12 x 768), ~2 min
    python benchmarks/bench_head_only.py --layers 24 --width 1024

What a search trial or a validation run does: `prepare(cfg, stored=FOLDER)` then a short `distill`. The teacher is a
GPT-2 with random weights saved with `save_pretrained` (nothing may be downloaded; the weights' values do not
matter here), over the embedded Shakespeare tokenizer's 8,192 tokens and data; the student is derived from it
(2 layers, 256 wide). The driver's part (`teacher_states.build`) runs once first. Then, in separate processes,
alternating: `full` loads the whole teacher (what every run did before: the stored states were used, the body was
loaded anyway) and `head` passes the states' folder, so only the head is read. Memory is the process's peak RSS
(VmHWM, Linux). Prints one JSON line per process and the ratios head / full (min and median over the repeats).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not in /proc/self/status")


def config(folder: Path, steps: int):
    from ctkd_tune import load_config

    return load_config(preset="tiny", overrides=[
        f"model.teacher={folder}", "model.student_layers=2", "model.student_hidden=256", "model.student_heads=4",
        "data.source=builtin:shakespeare", "data.block_size=128", "train.batch_size=4", f"train.steps={steps}",
        f"train.eval_every={steps}", "train.eval_batches=2", "train.device=cpu", "train.threads=1"])


def make_teacher(folder: Path, layers: int, width: int) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from ctkd_tune.inputs.embedded import builtin_tokenizer

    tokenizer = builtin_tokenizer("shakespeare")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_layer=layers, n_embd=width,
                                       n_head=max(1, width // 64)))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def child(mode: str, folder: Path, stored: str, steps: int) -> None:
    from ctkd_tune import distill, prepare
    from ctkd_tune.inputs.models import count_parameters

    cfg = config(folder, steps)
    tic = time.perf_counter()
    setup = prepare(cfg, stored=stored if mode == "head" else None)
    prepared = time.perf_counter() - tic
    history = distill(cfg, lambda metrics, checkpoint: None, setup=setup, progress=False).history
    print(json.dumps({"mode": mode, "head_only": setup.teacher.head_only, "peak_rss_mb": round(peak_rss_mb(), 1),
                      "prepare_s": round(prepared, 2), "teacher_m_params": round(count_parameters(
                          setup.teacher.model) / 1e6, 1), "val_ppl": history[-1]["val/ppl"]}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=["full", "head"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--stored", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.folder), args.stored, args.steps)
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench-head-only-"))
    os.environ["CTKD_TUNE_CACHE"] = str(work / "cache")  # the states go here, not into the user's cache
    folder = work / "teacher"
    make_teacher(folder, args.layers, args.width)
    from ctkd_tune import prepare
    from ctkd_tune.run.teacher_states import build

    cfg = config(folder, args.steps)
    driver = prepare(cfg)
    stored = build(cfg, driver.teacher, driver.data, log=lambda line: None)
    if stored is None:
        raise SystemExit("the teacher states were not stored (train.teacher_cache_mb too small?)")
    del driver
    runs = {"full": [], "head": []}
    for _ in range(args.repeats):
        for mode in ("full", "head"):
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--folder", str(folder), "--stored",
                                  str(stored), "--steps", str(args.steps)], capture_output=True, text=True,
                                 env=os.environ)
            if out.returncode:
                raise SystemExit(out.stderr.strip().splitlines()[-1])
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(row))
            runs[mode].append(row)
    ratios = lambda key: [h[key] / f[key] for h, f in zip(runs["head"], runs["full"])]  # noqa: E731
    print(json.dumps({"peak_rss_head_over_full": {"min": round(min(ratios("peak_rss_mb")), 3),
                                                  "median": round(statistics.median(ratios("peak_rss_mb")), 3)},
                      "prepare_head_over_full": {"min": round(min(ratios("prepare_s")), 3),
                                                 "median": round(statistics.median(ratios("prepare_s")), 3)},
                      "same_val_ppl": all(h["val_ppl"] == f["val_ppl"] for h, f in zip(runs["head"], runs["full"]))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
