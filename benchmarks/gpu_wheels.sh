#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with the wheels the nvidia-h200 device machine lacks, for
# benchmarks/gpu_acceptance.sh. That machine has Python 3.12 with torch, torchvision, numpy,
# pyyaml, fsspec, psutil, py-cpuinfo, tqdm, msgpack, einops, ninja, packaging and nvidia-ml-py,
# and no network; what octvideo.models / .nn / .data.device / .train.config and DeepSpeed
# (ZeRO 0 and 2, bf16, NCCL, a torch optimizer) need beyond that travels here:
#   av (octvideo.data imports the decoder), pydantic and its needs (octvideo.train.config,
#   DeepSpeed's config), hjson (DeepSpeed), typing_extensions (pydantic needs a newer one than
#   the machine's), and DeepSpeed itself, built here as a pure py3-none-any wheel (PyPI has only
#   its sdist; no C++ ops are built, none are needed with a torch optimizer).
# Versions are the project's .venv's (installed with constraints.txt). Run from anywhere, with
# network to PyPI, after `make install`; it prints each wheel's size and the total, and fails if
# the total exceeds BUDGET_MIB (default 45: the repo and the wheels together travel in 64 MiB).
# On the machine: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
#   --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=.venv/bin/python
BUDGET_MIB=${BUDGET_MIB:-45}
DOWNLOADED=(av pydantic pydantic_core annotated-types typing-inspection typing_extensions hjson)

pin() {  # NAME==VERSION as installed in the project's .venv
    echo "$1==$("$PYTHON" -c 'import sys, importlib.metadata as m; print(m.version(sys.argv[1]))' "$1")"
}

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT

"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$staging" $(for name in "${DOWNLOADED[@]}"; do pin "$name"; done)

DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir \
    -w "$staging" "$(pin deepspeed)"
ls "$staging"/deepspeed-*-py3-none-any.whl >/dev/null || { echo "DeepSpeed's wheel is not pure Python" >&2; exit 1; }

rm -rf .whl
mv "$staging" .whl
du -b .whl/*.whl | sort -rn | awk -v budget="$BUDGET_MIB" '
    { printf "%8.2f MiB  %s\n", $1 / 2^20, $2; total += $1 }
    END {
        printf "%8.2f MiB  total (budget %d MiB)\n", total / 2^20, budget
        if (total > budget * 2^20) { print "over budget" > "/dev/stderr"; exit 1 }
    }'
