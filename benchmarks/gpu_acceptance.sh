#!/usr/bin/env bash
# The GPU acceptance run: proves the CUDA + NCCL path and measures it, in one go, on a machine with
# one GPU and no network (the `device` machine: Python 3.12, torch + CUDA, no Ray / DeepSpeed /
# MLflow / PyAV). Ray's orchestration stays covered by the CPU suite; here the per-worker training
# logic runs under a plain torch.distributed group (octvideo.train.harness).
#
#   bash benchmarks/gpu_wheels.sh             # here, with network: fills .whl/ (DeepSpeed & co.)
#   bash benchmarks/gpu_acceptance.sh         # there (or `make gpu-check`): results in $OUT
#
# Steps (each bounded by `timeout`; a failed step is recorded and the next one still runs):
#   1. tests/gpu: OctConv on CUDA against CPU, fused against path-by-path, autocast, both layouts;
#   2. benchmarks/octconv.py --device cuda: bf16, both layouts, eager and compiled, alpha 0-0.5;
#   3. the training harness on one GPU with NCCL and DeepSpeed: oct_i3d_r50 at 224, 60 steps an
#      epoch, ZeRO-0 and ZeRO-2 in bf16 (alpha 0.5) and ZeRO-0 at alpha 0, each with a checkpoint,
#      a restore in a fresh trainer, and the fp32 export.
# Writes $OUT/gpu_acceptance.json (steps/s, clips/s, peak GPU memory, the alpha 0 vs 0.5 time
# ratio, every check) and the logs. Expected 5-6 minutes on an H200; the steps' time limits add up
# to under 10 minutes. A dry run of the script itself on CPU, at toy sizes (what the CPU suite's
# tests/test_benchmarks.py does):
#   DEVICE=cpu DATA_WORKERS=0 MODEL=oct_i3d_r18 WIDTH=8 SIZE=32 FRAMES=4 BATCH=2 STEPS=4 bash benchmarks/gpu_acceptance.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
DEVICE=${DEVICE:-cuda} DATA_WORKERS=${DATA_WORKERS:-6} MODEL=${MODEL:-oct_i3d_r50} SIZE=${SIZE:-224} FRAMES=${FRAMES:-8} BATCH=${BATCH:-8} STEPS=${STEPS:-60}
WIDTH_OPTION=${WIDTH:+--width $WIDTH}
mkdir -p "$OUT"
rm -f "$OUT/steps.txt"
PYTHON=${PYTHON:-python3}

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 DS_BUILD_OPS=0
status=0
step() {  # step NAME SECONDS COMMAND...: run, log to $OUT/NAME.log, remember failures
    local name=$1 limit=$2; shift 2
    echo "== $name"
    local started=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name $rc $((SECONDS - started))" >> "$OUT/steps.txt"
    echo "   exit $rc after $((SECONDS - started)) s (log: $OUT/$name.log)"
    tail -3 "$OUT/$name.log"
    [ "$rc" = 0 ] || status=1
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

step gpu_tests 100 "$PYTHON" -m pytest tests/gpu -q -p no:cacheprovider -x
cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
step octconv 220 "$PYTHON" benchmarks/octconv.py --device "$DEVICE" --size "$SIZE" --frames "$FRAMES" --rounds 3 \
    --output "$OUT/BENCHMARKS.md" --json "$OUT/octconv.json"
harness() {  # harness NAME OPTIONS...
    rm -rf "/tmp/harness-$1"
    mkdir -p "/tmp/harness-$1"
    # shellcheck disable=SC2086
    step "harness_$1" 90 "$PYTHON" -m octvideo.train.harness --device "$DEVICE" --model "$MODEL" $WIDTH_OPTION \
        --size "$SIZE" --frames "$FRAMES" --batch "$BATCH" --steps "$STEPS" --log-every $((STEPS / 6 > 0 ? STEPS / 6 : 1)) \
        --precision bf16 --data-workers "$DATA_WORKERS" --bad-videos 2 --folder "/tmp/harness-$1" --output "$OUT/harness_$1.json" "${@:2}"
}
harness zero0_alpha0.5 --zero-stage 0 --alpha 0.5
harness zero2_alpha0.5 --zero-stage 2 --alpha 0.5
harness zero0_alpha0 --zero-stage 0 --alpha 0

"$PYTHON" benchmarks/gpu_summary.py "$OUT" | tee "$OUT/summary.txt"
exit $status
