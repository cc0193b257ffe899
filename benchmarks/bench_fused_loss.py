"""Benchmark the fused head + KD + CE loss against the logits path, forward + backward, one process per measurement.

Run from the repository root:

    python benchmarks/bench_fused_loss.py                                  # V = 151,936, N = 2,048, H = 576, CPU
    python benchmarks/bench_fused_loss.py --vocab 32768 --tokens 512       # quick (~1 min)
    python benchmarks/bench_fused_loss.py --device cuda --tokens 16384 --hidden 896   # a GPU (bf16 autocast)

The two ways to get (kd, ce) and the gradients of 0.5·kd + 0.5·ce w.r.t. the student's hidden states, its head and
a learnable 0-d τ, from hidden states h_s (N, H) requiring grad, h_t (N, H), heads W_s, W_t (V, H), labels (N,):
    logits: s = h_s·W_sᵀ (autograd), t = h_t·W_tᵀ (no grad), kd_loss(s, t, τ, chunk_size=1024) + F.cross_entropy(s)
            — what the loop does without `loss.fused` (1024 = the default loss.chunk_size)
    fused:  fused_kd_ce_loss(h_s, W_s, None, h_t, W_t, None, labels, τ, kd_weight=0.5, ce_weight=0.5)
On CUDA both run under bf16 autocast, as the loop does.

What is measured, each in its own subprocess, alternating logits / fused for --rounds rounds:
- memory: the extra peak above the inputs over the first forward + backward (the student head's gradient
  included). CPU: the process's RSS high-water mark (writing "5" to /proc/self/clear_refs resets VmHWM to the
  current RSS; large tensors are mmapped by glibc and returned when freed). CUDA: torch.cuda.max_memory_allocated
  above memory_allocated after the inputs exist.
- time: forward + backward, the fastest of --repeats in the process and over rounds (on a machine shared with
  other work the fastest run is the one least disturbed by it); the process's CPU time of each run is printed
  too (on CPU it moves less with the machine's load than wall time). Ratios are fused / logits from the same run.
- agreement: kd, ce, ∂/∂τ and the gradient norms of both paths (the inputs come from the same seed).
Prints one JSON line per subprocess, a table, then one JSON summary line; exits 1 if a ratio misses
--max-memory-ratio / --max-time-ratio.
"""

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from ctkd_tune.core.fused_loss import CPU_CHUNK_MB, fused_kd_ce_loss  # noqa: E402
from ctkd_tune.core.losses import kd_loss  # noqa: E402

MB = 2**20


def logits_path(hs, Ws, ht, Wt, labels, tau, args):
    s = F.linear(hs, Ws)  # (N, V)
    with torch.no_grad():
        t = F.linear(ht, Wt)  # (N, V)
    kd = kd_loss(s, t, tau, chunk_size=args.kd_chunk_size)
    ce = F.cross_entropy(s.float(), labels)
    return kd, ce


def fused_path(hs, Ws, ht, Wt, labels, tau, args):
    return fused_kd_ce_loss(hs, Ws, None, ht, Wt, None, labels, tau, kd_weight=0.5, ce_weight=0.5,
                            chunk_mb=args.chunk_mb)


PATHS = {"logits": logits_path, "fused": fused_path}


def make_inputs(tokens, vocab, hidden, device, seed=0):
    """h ~ N(0, 1); W_s ~ N(0, 4/H) (logits of std ≈ 2); teacher: same hidden states, W_t = W_s + noise."""
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(tokens, hidden, generator=g)
    Ws = torch.randn(vocab, hidden, generator=g).mul_(2.0 / hidden**0.5)
    Wt = torch.randn(vocab, hidden, generator=g).mul_(1.0 / hidden**0.5).add_(Ws)
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    ht = hs.clone()
    to = lambda x: x.to(device)
    return (to(hs).requires_grad_(), to(Ws).requires_grad_(), to(ht), to(Wt), to(labels),
            torch.tensor(2.0, device=device, requires_grad=True))


def proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(args) -> None:
    """Subprocess body: one path's extra peak memory, times and results, as one JSON line."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn = PATHS[args.child]

    def fwd_bwd(hs, Ws, ht, Wt, labels, tau):
        hs.grad = Ws.grad = tau.grad = None
        with autocast():
            kd, ce = fn(hs, Ws, ht, Wt, labels, tau, args)
        (0.5 * kd + 0.5 * ce).backward()
        return kd.detach(), ce.detach()

    fwd_bwd(*make_inputs(64, 512, 32, device))  # load kernels and thread pools first
    inputs = make_inputs(args.tokens, args.vocab, args.hidden, device)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = proc_status_kb("VmRSS") * 1024
    times, cpu_times = [], []
    for rep in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        kd, ce = fwd_bwd(*inputs)
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        if rep == 0:
            peak = torch.cuda.max_memory_allocated() if cuda else proc_status_kb("VmHWM") * 1024
    hs, Ws, tau = inputs[0], inputs[1], inputs[5]
    print(json.dumps({"path": args.child, "extra_mb": round((peak - base) / MB, 1), "time_s": min(times),
                      "times_s": [round(x, 3) for x in times], "cpu_s": [round(x, 3) for x in cpu_times],
                      "kd": kd.item(), "ce": ce.item(),
                      "dtau": tau.grad.item(), "grad_h_norm": hs.grad.float().norm().item(),
                      "grad_W_norm": Ws.grad.float().norm().item()}))


def run_child(args, name: str) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--device", args.device, "--vocab", str(args.vocab),
           "--tokens", str(args.tokens), "--hidden", str(args.hidden), "--repeats", str(args.repeats),
           "--kd-chunk-size", str(args.kd_chunk_size), "--chunk-mb", str(args.chunk_mb)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} subprocess failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    wall_start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--vocab", type=int, default=151936, help="vocabulary size V")
    parser.add_argument("--tokens", type=int, default=2048, help="number of tokens N")
    parser.add_argument("--hidden", type=int, default=576, help="hidden size H of both models")
    parser.add_argument("--repeats", type=int, default=2, help="timed forward+backward runs per process")
    parser.add_argument("--rounds", type=int, default=2, help="alternating logits/fused process pairs")
    parser.add_argument("--kd-chunk-size", type=int, default=1024, help="kd_loss chunk (tokens) of the logits path")
    parser.add_argument("--chunk-mb", type=float, default=None,
                        help="chunk memory budget of the fused path (default: the loop's, 224 on CPU, 1024 on CUDA)")
    parser.add_argument("--max-memory-ratio", type=float, default=0.1, help="fail above this fused/logits ratio")
    parser.add_argument("--max-time-ratio", type=float, default=1.0, help="fail above this fused/logits ratio")
    parser.add_argument("--child", choices=sorted(PATHS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.chunk_mb is None:  # what the loop uses on this device (fused_step.chunk_mb)
        args.chunk_mb = 1024.0 if args.device == "cuda" else CPU_CHUNK_MB
    if args.child:
        child(args)
        return 0

    runs = {name: [] for name in PATHS}
    for _ in range(args.rounds):  # alternating, so load changes on a shared machine hit both paths alike
        for name in PATHS:
            runs[name].append(run_child(args, name))
    mem = {name: max(r["extra_mb"] for r in rs) for name, rs in runs.items()}
    sec = {name: min(r["time_s"] for r in rs) for name, rs in runs.items()}
    a, b = runs["logits"][0], runs["fused"][0]
    rel = lambda key: abs(b[key] - a[key]) / max(abs(a[key]), 1e-30)
    print(f"\nfused loss benchmark: device={args.device}, N={args.tokens}, V={args.vocab}, H={args.hidden}, "
          f"threads={torch.get_num_threads()}, {args.rounds} rounds x {args.repeats} repeats, "
          f"kd chunk {args.kd_chunk_size} tokens, fused budget {args.chunk_mb:g} MB")
    print(f"one (N, V) float32 tensor = {args.tokens * args.vocab * 4 / MB:.0f} MB")
    print(f"{'':<22}{'fwd+bwd best (s)':>18}{'extra peak mem (MB)':>22}")
    for name, label in (("logits", "logits + kd_loss + CE"), ("fused", "fused_kd_ce_loss")):
        print(f"{label:<22}{sec[name]:>18.3f}{mem[name]:>22.1f}")
    t_ratio, m_ratio = sec["fused"] / sec["logits"], mem["fused"] / mem["logits"]
    print(f"{'ratio fused/logits':<22}{t_ratio:>18.3f}{m_ratio:>22.3f}")
    cpu = {name: min(min(r["cpu_s"]) for r in rs) for name, rs in runs.items()}
    if args.device == "cpu":
        print(f"process CPU time, fastest run: logits {cpu['logits']:.1f} s, fused {cpu['fused']:.1f} s, "
              f"ratio {cpu['fused'] / cpu['logits']:.3f}")
    print("relative differences: " + "  ".join(f"{k} {rel(k):.1e}" for k in
                                              ("kd", "ce", "dtau", "grad_h_norm", "grad_W_norm")))
    print(f"(benchmark wall time {time.perf_counter() - wall_start:.0f} s)")
    ok = m_ratio <= args.max_memory_ratio and t_ratio <= args.max_time_ratio
    print(f"{'OK' if ok else 'FAIL'}: memory ratio {m_ratio:.3f} (goal <= {args.max_memory_ratio}), "
          f"time ratio {t_ratio:.3f} (goal <= {args.max_time_ratio})")
    print(json.dumps({"summary": "bench_fused_loss", "device": args.device, "tokens": args.tokens,
                      "vocab": args.vocab, "hidden": args.hidden, "logits_mb": mem["logits"], "fused_mb": mem["fused"],
                      "memory_ratio": round(m_ratio, 4), "logits_s": round(sec["logits"], 4),
                      "fused_s": round(sec["fused"], 4), "time_ratio": round(t_ratio, 4),
                      "cpu_time_ratio": round(cpu["fused"] / cpu["logits"], 4),
                      "max_rel_diff": max(rel(k) for k in ("kd", "ce", "dtau", "grad_h_norm", "grad_W_norm")),
                      "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
