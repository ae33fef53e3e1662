#!/usr/bin/env bash
# The one command run on a lent GPU machine (device tool; carry .whl and .xfer): install the wheels the
# machine lacks, unpack the text encoder, continue the world on CUDA. Results land in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=15
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
python3 benchmarks/gpu_bootstrap/pack_text_encoder.py unpack .xfer/minilm /tmp/site || exit 4
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 benchmarks/gpu_bootstrap/continue_world.py --out "$OUT" "$@" 2>&1 | tr '\r' '\n' | grep -v "it/s\]$\|step/s\]$\|batch/s\]$\|scene/s\]$" | tee "$OUT/run.log"
