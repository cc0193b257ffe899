#!/usr/bin/env bash
# GPU check for ctkd-tune: run on a machine with one CUDA GPU, from the repository root, in under 8 minutes:
#
#     bash benchmarks/gpu_check.sh            # needs the package's dependencies installed (pip install -e .)
#
# Prints one JSON line per check on stdout (each check's full output goes to $LOG_DIR/NAME.log):
#   1. gpu_tests   the tests marked `gpu` (fused loss under bf16 autocast vs the float32 logits path; fused vs
#                  logits distillation on CUDA)
#   2. bench       benchmarks/bench_fused_loss.py on CUDA at V = 151,936, N = 16,384, H = 896: peak memory and time,
#                  fused vs logits + kd_loss + CE, forward + backward, one process per measurement
#   3. search      a 2-trial tiny search with --gpus-per-trial 0.5 (both trials share the GPU)
# Exits non-zero if any check failed. Each check has its own time limit (2 + 3.5 + 2.5 minutes at most).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG_DIR="${LOG_DIR:-$(mktemp -d /tmp/ctkd-gpu-check.XXXXXX)}"
mkdir -p "$LOG_DIR"
failed=0

# check NAME LIMIT_S COMMAND...: run COMMAND under `timeout`, log its output, print one JSON line about it.
check() {
    local name=$1 limit=$2
    shift 2
    local start end rc
    start=$(date +%s.%N)
    timeout --kill-after=20 "$limit" bash -c '"$@"' _ "$@" >"$LOG_DIR/$name.log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    [ "$rc" -eq 0 ] || failed=1
    python - "$name" "$rc" "$start" "$end" "$LOG_DIR/$name.log" <<'EOF'
import json, sys
name, rc, start, end, log = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
lines = [line.rstrip() for line in open(log, errors="replace") if line.strip()]
out = {"check": name, "ok": rc == 0, "rc": rc, "timed_out": rc == 124, "seconds": round(end - start, 1), "log": log}
summary = [line for line in lines if line.startswith('{"summary"')]
if summary:  # the benchmark's own JSON summary
    out.update({k: v for k, v in json.loads(summary[-1]).items() if k != "summary"})
else:
    out["tail"] = lines[-1][-300:] if lines else ""
print(json.dumps(out), flush=True)
EOF
}

python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo '{"check": "cuda", "ok": false, "tail": "torch.cuda.is_available() is False"}'
    exit 1
}
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" >"$LOG_DIR/cuda.log" 2>&1

check gpu_tests 120 python -m pytest -m gpu tests/test_fused_loss.py tests/test_fused_step.py -q -p no:cacheprovider
check bench 210 python benchmarks/bench_fused_loss.py --device cuda --vocab 151936 --tokens 16384 --hidden 896 \
    --rounds 2 --repeats 3 --chunk-mb 1024 --max-time-ratio 1.0 --max-memory-ratio 0.1
search_two_trials() {  # the search, then: both trials completed on the GPU
    python -m ctkd_tune.cli search --preset tiny --num-samples 2 --gpus-per-trial 0.5 --cpus-per-trial 1 \
        --scheduler none --name gpu-check --results-dir "$LOG_DIR/results" \
        --set train.steps=40 --set train.device=cuda || return 1
    python -c "
import pandas as pd, sys
trials = pd.read_parquet(sys.argv[1])
print(trials[['status', 'final_val_ppl', 'wall_time_s']].to_string())
sys.exit(0 if len(trials) == 2 and (trials['status'] == 'completed').all() else 1)" "$LOG_DIR/results/gpu-check/trials.parquet"
}
export -f search_two_trials
export LOG_DIR
check search 150 search_two_trials
exit $failed
