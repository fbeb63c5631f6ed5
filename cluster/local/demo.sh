#!/usr/bin/env bash
# The CPU demo end to end, from a fresh clone: install, bring up the local stack, write the synthetic
# dataset to its S3, train configs/demo.yaml as a Ray job, and summarise the result from MLflow.
# Arguments go to pipelines/kinetics.py (e.g. --set optim.epochs=1). The stack is stopped at the end
# unless KEEP_STACK=1. The dataset's size comes from the variables below.
set -euo pipefail
CLASSES=${DEMO_CLASSES:-4}
VIDEOS_PER_CLASS=${DEMO_VIDEOS_PER_CLASS:-100}
DURATION=${DEMO_DURATION:-4}      # seconds per video
WIDTH=${DEMO_WIDTH:-64}
HEIGHT=${DEMO_HEIGHT:-48}
SYNTH_WORKERS=${DEMO_SYNTH_WORKERS:-2}
DATA=s3://octvideo-demo/synthetic  # where configs/demo.yaml reads it
CONFIG=configs/demo.yaml

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source cluster/local/common.sh
BIN=.venv/bin
timings=()

phase() {  # name command...: run it and record how long it took
  local name=$1 start=$SECONDS status=0
  shift
  echo "== $name"
  "$@" || status=$?
  timings+=("$(printf '%-8s %5d s' "$name" $((SECONDS - start)))$( ((status == 0)) || echo ' (failed)')")
  return "$status"
}
finish() {
  local status=$?
  if [[ ${KEEP_STACK:-0} == 1 ]]; then
    echo "the stack is still up (source $STACK/env to use it); stop it with cluster/local/down.sh"
  else
    cluster/local/down.sh
  fi
  ((${#timings[@]})) && printf 'time: %s\n' "${timings[@]}"
  ((status == 0)) || echo "demo FAILED (exit status $status)" >&2
}
synth() {
  # An S3 that outlived an earlier demo (KEEP_STACK=1) has the dataset already.
  if "$BIN/python" -c "import fsspec, sys; sys.exit(not fsspec.filesystem('s3').exists('${DATA#s3://}/train.csv'))"; then
    echo "$DATA is there already"
  else
    "$BIN/octvideo" data synth "$DATA" --classes "$CLASSES" --videos-per-class "$VIDEOS_PER_CLASS" --seed 0 \
      --duration "$DURATION" --width "$WIDTH" --height "$HEIGHT" --workers "$SYNTH_WORKERS"
  fi
}

phase install make install
trap finish EXIT
phase stack cluster/local/up.sh
source "$STACK/env"
phase synth synth
# Waits for the job and streams its logs; exits non-zero if the job fails.
phase job "$BIN/ray" job submit --working-dir . --runtime-env "$STACK/runtime_env.yaml" \
  -- python pipelines/kinetics.py --config "$CONFIG" "$@"
"$BIN/python" cluster/local/summary.py --config "$CONFIG"
