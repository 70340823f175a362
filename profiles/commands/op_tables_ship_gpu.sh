#!/usr/bin/env bash
# Issue 12: the shipped operator tables (shifttune/data/op_tables/<model>_<gpu>.json), measured on one GPU for
# P = 1, 2, 4, 8, model after model, in one device call of at most ~9 min (run from the repository root):
#   MODELS="llama-3.1-8b llama-3.3-70b" bash profiles/commands/op_tables_ship_gpu.sh
# `profile --ops` resumes a table: layouts already in the file are kept, so a call cut short by its time
# continues in the next one (commit what came back first). The tables land in $OUT/op_tables_ship.tgz.
set -u
OUT=${OUT:-/tmp/out}
export PYTHONPATH=$PWD
MODELS=${MODELS:-"llama-3.1-8b llama-3.3-70b qwen3-32b qwen3-8b qwen2.5-7b mistral-7b-v0.3"}
BUDGET=${BUDGET:-500}  # seconds for all models
G=$(python -c "import torch; from shifttune.recommend.gpus import gpu_slug; print(gpu_slug(torch.cuda.get_device_name(0)))")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/op_tables_ship.log"
START=$SECONDS
for M in $MODELS; do
  LEFT=$((BUDGET - (SECONDS - START)))
  [ $LEFT -lt 30 ] && echo "$M: no time left" | tee -a "$OUT/op_tables_ship.log" && continue
  T=shifttune/data/op_tables/${M}_$G.json
  timeout $LEFT python -m shifttune.cli profile --model $M --ops --gpus 1,2,4,8 --out "$T" 2>&1 | grep -v Warning \
    | tail -3 | tee -a "$OUT/op_tables_ship.log"
  echo "$M rc=${PIPESTATUS[0]} after $((SECONDS - START)) s" | tee -a "$OUT/op_tables_ship.log"
done
tar czf "$OUT/op_tables_ship.tgz" shifttune/data/op_tables
