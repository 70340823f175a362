#!/usr/bin/env bash
# Issue 12 on one GPU, in one device call (run from the repository root; ~560 s at most):
#   bash profiles/commands/op_tables_gpu.sh
# 1. the P = 1 operator table of llama-3.1-8b with a kernel breakdown, 2. a measured P = 1 profile on the
# same grid, 3. the predicted P = 1 profile from that table, 4. --compare (the check: median
# error <= 5%, p90 <= 10%), 5. whatever time is left: the P = 2/4/8 tables (the command resumes).
# Afterwards: commit the table as shifttune/data/op_tables/llama-3.1-8b_<gpu>.json and the rest under profiles/runs/.
set -u
OUT=${OUT:-/tmp/out}
FINAL=$OUT && OUT=/tmp/op_tables && rm -rf $OUT && mkdir -p $OUT  # tarred at the end: the device returns 8 files
export PYTHONPATH=$PWD
M=llama-3.1-8b
S="python -m shifttune.cli profile --model $M"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.csv"
G=$(python -c "import torch; from shifttune.recommend.gpus import gpu_slug; print(gpu_slug(torch.cuda.get_device_name(0)))")
T=$OUT/ops_${M}_$G.json
timeout 240 $S --ops --gpus 1 --breakdown 1,32,512,8192 --out "$T" > "$OUT/1_ops_p1.log" 2>&1; echo "ops_p1 rc=$?" >> "$OUT/rc.txt"
timeout 200 $S --gpus 1 --iters 5 --warmup 2 --no-tui --out "$OUT/measured_${M}_${G}x1.json" > "$OUT/2_measured_p1.log" 2>&1
echo "measured_p1 rc=$?" >> "$OUT/rc.txt"
$S --predict --gpus "1x$G" --op-table "$T" --out "$OUT/predicted_${M}_${G}x1.json" > "$OUT/3_predict.log" 2>&1
echo "predict rc=$?" >> "$OUT/rc.txt"
python -m shifttune.cli profile --compare "$OUT/measured_${M}_${G}x1.json" "$OUT/predicted_${M}_${G}x1.json" \
  --out "$OUT/compare_${M}_${G}x1.json" > "$OUT/4_compare.txt" 2>&1; echo "compare rc=$?" >> "$OUT/rc.txt"
timeout 110 $S --ops --gpus 1,2,4,8 --out "$T" > "$OUT/5_ops_all.log" 2>&1; echo "ops_all rc=$?" >> "$OUT/rc.txt"
cat "$OUT/rc.txt"; tail -n 4 "$OUT/1_ops_p1.log" "$OUT/2_measured_p1.log" "$OUT/3_predict.log"
tail -n 12 "$OUT/4_compare.txt"; tail -n 4 "$OUT/5_ops_all.log"
tar czf "$FINAL/op_tables.tgz" -C "$OUT" . && cp "$OUT/rc.txt" "$OUT/4_compare.txt" "$FINAL/"
