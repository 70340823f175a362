#!/usr/bin/env bash
# `shifttune serve --all-reduce nccl` against `--all-reduce symm_mem` through the server, in one device call of a
# host with GPUS GPUs (default 2), from the repository root (carry: wheels): the same bench on forced TP over all the
# GPUs, one server each.
#   GPUS=2 MODEL=llama-3.1-8b bash profiles/commands/serve_all_reduce_gpu.sh
# Results: $OUT/bench_tp_<all-reduce>.json and .log (TTFT, TPOT, throughput), plus serve_all_reduce.log.
set -u
OUT=${OUT:-/tmp/out}
GPUS=${GPUS:-2}
mkdir -p "$OUT"
M=${MODEL:-llama-3.1-8b}
python -m pip install -q --no-index --find-links wheels fastapi uvicorn textual plotext > /dev/null 2>&1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/serve_all_reduce.log"
for AR in nccl symm_mem; do
  timeout ${BENCH_TIMEOUT:-200} python -m shifttune.cli bench --compare tp --model $M --device cuda --tp $GPUS --sp 1 \
    --rates ${RATES:-inf} --num-prompts ${NUM_PROMPTS:-32} --input-len 1024 --output-len 128 --tokenizer tiny \
    --server-arg="--load-format dummy --all-reduce $AR" --out $OUT/bench_tp_$AR.json > $OUT/bench_tp_$AR.log 2>&1
  echo "$AR rc=$?: $(grep -E 'TTFT p50|TPOT p50|output tok/s|failed' $OUT/bench_tp_$AR.log | tr -s ' ' | tr '\n' ' ')" | tee -a "$OUT/serve_all_reduce.log"
done
