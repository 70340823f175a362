#!/usr/bin/env bash
# Issue 12's simulator-vs-server table on one GPU, in one device call (~8-9 min; carry wheels for the server):
#   bash profiles/commands/validate_gpu.sh
# A profile of llama-3.1-8b measured on this card, `shifttune serve` on the same card, then
# `shifttune recommend --validate` at a low, a medium and a near-saturating rate (check the top rate first:
# `shifttune recommend --profile <profile> --input-len 1024 --output-len 128` prints about half of saturation).
set -u
OUT=${OUT:-/tmp/out}
python -m pip install -q --no-index --find-links wheels fastapi uvicorn prometheus_client httpx > /dev/null 2>&1
export PYTHONPATH=$PWD
M=llama-3.1-8b
python -m shifttune.cli profile --model $M --gpus 1 --load-format dummy --iters 5 --warmup 2 --no-tui \
  --out "$OUT/profile_${M}_h100x1.json"
python -m shifttune.cli serve $M --load-format dummy --no-tui --port 8000 > "$OUT/serve.log" 2>&1 &
SRV=$!
until curl -sf http://127.0.0.1:8000/health > /dev/null; do sleep 5; done
python -m shifttune.cli recommend --validate http://127.0.0.1:8000 --profile "$OUT/profile_${M}_h100x1.json" \
  --rate 2,6,12 --num-requests 150 --input-len 1024 --output-len 128 --spread 0 --out "$OUT/validate_${M}_h100x1.json"
kill -INT $SRV
wait $SRV
