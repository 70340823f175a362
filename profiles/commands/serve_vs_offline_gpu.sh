#!/usr/bin/env bash
# Issue 9's server-vs-offline table on one GPU, in one device call (run from the repository root; carry wheels):
#   bash profiles/commands/serve_vs_offline_gpu.sh
set -u
OUT=${OUT:-/tmp/out}
python -m pip install -q --no-index --find-links wheels fastapi uvicorn prometheus_client httpx pytest pytest-timeout \
  hypothesis > /dev/null 2>&1
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/card.txt"
timeout 60 python -m pytest -q -m gpu tests/test_gpu.py -k "sync" > "$OUT/gpu_tests_sync.log" 2>&1
echo "gpu tests rc=$?" >> "$OUT/gpu_tests_sync.log"; tail -2 "$OUT/gpu_tests_sync.log"
timeout 520 python -m shifttune.bench.serve_vs_offline --model llama-3.1-8b --device cuda --repeats 3 \
  --out "$OUT/serve_vs_offline_llama-3.1-8b_h100x1_async_repeats3.json" 2>&1 | grep -v Warning
