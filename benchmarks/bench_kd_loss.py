"""Benchmark ``kd_loss`` (chunked, analytic backward) against the naive F.kl_div formula.

Run from the repository root:

    python benchmarks/bench_kd_loss.py                       # V = 49,152, 4,096 tokens (~1.5 min on 2 cores)
    python benchmarks/bench_kd_loss.py --vocab 8192 --tokens 4096   # quick (~20 s)

Inputs: float32 student logits (N, V) requiring grad, float32 teacher logits (N, V) without grad, a 0-d τ
requiring grad, all tokens valid. The naive reference is

    F.kl_div(F.log_softmax(s / τ, -1), F.log_softmax(t / τ, -1), reduction="batchmean", log_target=True) · τ²

What is measured:
- time: forward + backward, median of --repeats, both losses in this process on the same inputs.
- memory: the extra peak memory above the inputs (forward + backward, the gradient included), each loss in
  its own subprocess. tracemalloc cannot see torch, so we use the kernel's RSS high-water mark: after the
  inputs exist, writing "5" to /proc/self/clear_refs resets VmHWM to the current RSS; after fwd + bwd,
  extra = VmHWM − that RSS. This tracks tensors on CPU because large blocks are mmapped by glibc
  (allocations above 32 MB always are) and returned to the OS when freed. Linux only.
- accuracy: max |Δ| of the loss and of the gradients w.r.t. the student logits and τ.

Exits with status 1 if the memory ratio (ours / naive) exceeds --max-memory-ratio. The saving needs several
chunks: with tokens <= chunk_size the whole input is one chunk and kd_loss holds 3 (N, V) scratch buffers.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from ctkd_tune.core.losses import kd_loss  # noqa: E402

MB = 2**20


def naive_kd(s: torch.Tensor, t: torch.Tensor, tau: torch.Tensor, chunk_size: int) -> torch.Tensor:
    return F.kl_div(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1), reduction="batchmean",
                    log_target=True) * tau**2


def ours_kd(s: torch.Tensor, t: torch.Tensor, tau: torch.Tensor, chunk_size: int) -> torch.Tensor:
    return kd_loss(s, t, tau, chunk_size=chunk_size)


LOSSES = {"naive": naive_kd, "ours": ours_kd}


def make_inputs(tokens: int, vocab: int, seed: int = 0):
    """Student logits (N, V) ~ 2·N(0, 1) requiring grad, teacher = student + N(0, 1), τ = 2 requiring grad."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(tokens, vocab, generator=g).mul_(2.0)
    t = torch.randn(tokens, vocab, generator=g).add_(s)
    return s.requires_grad_(), t, torch.tensor(2.0, requires_grad=True)


def fwd_bwd(fn, s, t, tau, chunk_size):
    s.grad = tau.grad = None
    loss = fn(s, t, tau, chunk_size)
    loss.backward()
    return loss.detach()


def proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child_peak_memory(args) -> None:
    """Subprocess body: print the extra peak memory (MB) of one forward + backward of one loss, as JSON."""
    fn = LOSSES[args.child]
    fwd_bwd(fn, *make_inputs(64, 512), args.chunk_size)  # load kernels and thread pools first
    s, t, tau = make_inputs(args.tokens, args.vocab)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        exact = True
    except OSError:
        exact = False  # VmHWM then includes the input construction: the numbers are a lower bound
    base_kb = proc_status_kb("VmRSS") if exact else proc_status_kb("VmHWM")
    fwd_bwd(fn, s, t, tau, args.chunk_size)
    extra_mb = (proc_status_kb("VmHWM") - base_kb) / 1024
    print(json.dumps({"extra_mb": extra_mb, "exact": exact}))


def peak_memory_in_subprocesses(args) -> dict:
    """Run one child per loss (in parallel: VmHWM is per process) and collect their JSON results."""
    procs = {}
    for name in LOSSES:
        cmd = [sys.executable, __file__, "--child", name, "--vocab", str(args.vocab), "--tokens", str(args.tokens),
               "--chunk-size", str(args.chunk_size)]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"memory subprocess for {name!r} failed:\n{err}")
        results[name] = json.loads(out.strip().splitlines()[-1])
    return results


def main() -> int:
    wall_start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary size V")
    parser.add_argument("--tokens", type=int, default=4096, help="number of tokens N")
    parser.add_argument("--chunk-size", type=int, default=1024, help="kd_loss chunk size (tokens)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward+backward runs per loss")
    parser.add_argument("--max-memory-ratio", type=float, default=0.35, help="fail above this ours/naive ratio")
    parser.add_argument("--child", choices=sorted(LOSSES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_peak_memory(args)
        return 0

    mem = peak_memory_in_subprocesses(args)  # first, while this process is still small

    s, t, tau = make_inputs(args.tokens, args.vocab)
    times, results = {name: [] for name in LOSSES}, {}
    for rep in range(args.repeats):  # interleaved, so load changes hit both losses alike
        for name, fn in LOSSES.items():
            start = time.perf_counter()
            loss = fwd_bwd(fn, s, t, tau, args.chunk_size)
            times[name].append(time.perf_counter() - start)
            if rep == 0:  # values and gradients to compare
                results[name] = (loss, s.grad.clone(), tau.grad.clone())
    (l_n, gs_n, gt_n), (l_o, gs_o, gt_o) = results["naive"], results["ours"]
    del results, s, t

    t_naive, t_ours = statistics.median(times["naive"]), statistics.median(times["ours"])
    m_naive, m_ours = mem["naive"]["extra_mb"], mem["ours"]["extra_mb"]
    mem_ratio = m_ours / m_naive
    input_mb = args.tokens * args.vocab * 4 / MB
    print(f"kd_loss benchmark: N={args.tokens} tokens, V={args.vocab}, float32, chunk_size={args.chunk_size}, "
          f"threads={torch.get_num_threads()}, repeats={args.repeats} (median)")
    print(f"inputs: student + teacher logits = 2 x {input_mb:.1f} MB; one (N, V) float32 tensor = {input_mb:.1f} MB")
    print(f"{'':<18}{'fwd+bwd time (s)':>18}{'extra peak mem (MB)':>22}")
    print(f"{'naive F.kl_div':<18}{t_naive:>18.3f}{m_naive:>22.1f}")
    print(f"{'kd_loss (ours)':<18}{t_ours:>18.3f}{m_ours:>22.1f}")
    print(f"{'ratio ours/naive':<18}{t_ours / t_naive:>18.3f}{mem_ratio:>22.3f}")
    print(f"max |diff| loss: {(l_o - l_n).abs().item():.2e}  grad student: {(gs_o - gs_n).abs().max().item():.2e}  "
          f"grad tau: {(gt_o - gt_n).abs().item():.2e}  (loss = {l_n.item():.6f}, dloss/dtau = {gt_n.item():.6f})")
    if not (mem["naive"]["exact"] and mem["ours"]["exact"]):
        print("warning: /proc/self/clear_refs not writable; memory numbers are lower bounds")
    print(f"(benchmark wall time {time.perf_counter() - wall_start:.0f} s)")
    if mem_ratio > args.max_memory_ratio:
        print(f"FAIL: memory ratio {mem_ratio:.3f} > {args.max_memory_ratio}")
        return 1
    print(f"OK: memory ratio {mem_ratio:.3f} <= {args.max_memory_ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
