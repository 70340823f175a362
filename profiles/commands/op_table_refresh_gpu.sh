#!/usr/bin/env bash
# A shipped operator table measured again, with its check against the engine, on one GPU, model after model, in one
# device call (run from the repository root; carry: wheels):
#   MODELS="mistral-7b-v0.3 qwen2.5-7b" BUDGET=560 bash profiles/commands/op_table_refresh_gpu.sh
# For each model: a measured P = 1 profile of today's engine (`profile --iters 5 --warmup 2`), the profile predicted
# from the table that ships for this GPU (the roofline where none does) and `profile --compare` of the two
# ("before"); then the table measured again (`profile --ops --gpus 1,2,4,8 --breakdown 1,32,512,8192`; it lands in
# shifttune/data/op_tables/) and the same comparison ("after"). A model the budget cuts keeps its partial table:
# FRESH=0 resumes it (`profile --ops` keeps the layouts already in the file) and skips both checks (they need the
# measured profile of the same call).
# Into $OUT: check.log, <model>_compare_{before,after}.txt, <model>.tgz (measured_*.json, predicted_*.json, compare_*.{txt,json}, *.log),
# op_tables.tgz
. "$(dirname "$0")/gpu_setup.sh"
MODELS=${MODELS:-"mistral-7b-v0.3 qwen2.5-7b"}
BUDGET=${BUDGET:-560}  # seconds for all models
FRESH=${FRESH:-1}
G=$(python -c "import torch; from shifttune.recommend.gpus import gpu_slug; print(gpu_slug(torch.cuda.get_device_name(0)))")
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader); slug $G"
START=$SECONDS
left() { echo $((BUDGET - (SECONDS - START))); }
for M in $MODELS; do
  W=/tmp/refresh/$M && mkdir -p "$W"
  S="python -m shifttune.cli profile --model $M" T=shifttune/data/op_tables/${M}_$G.json
  measured=$W/measured_${M}_${G}x1.json
  # predicted from $T (or the roofline) and compared with the measured profile: $1 = before | after
  check() {
    local src=$T && [ -f "$T" ] || src=roofline
    if [ -f "$T" ]; then $S --predict --gpus "1x$G" --op-table "$T" --out "$W/predicted_$1.json" > "$W/predict_$1.log" 2>&1
    else $S --predict --gpus "1x$G" --out "$W/predicted_$1.json" > "$W/predict_$1.log" 2>&1; fi
    python -m shifttune.cli profile --compare "$measured" "$W/predicted_$1.json" --out "$W/compare_$1.json" \
      > "$W/compare_$1.txt" 2>&1
    stamp "$M $1 ($src): $(grep -E "^overall|^crossover" "$W/compare_$1.txt" | tr '\n' ' ')"
  }
  if [ "$FRESH" = 1 ]; then
    [ "$(left)" -lt 200 ] && { stamp "$M: no time left"; continue; }
    timeout 200 $S --gpus 1 --iters 5 --warmup 2 --no-tui --out "$measured" > "$W/measured.log" 2>&1
    stamp "$M measured P = 1 rc=$?: $(tail -1 "$W/measured.log")"
    check before
    [ -f "$T" ] && cp "$T" "$W/table_before.json" && rm -f "$T"
  fi
  [ "$(left)" -lt 40 ] && { stamp "$M: no time left for --ops"; continue; }
  stamp "$M before --ops: $(nvidia-smi --query-gpu=memory.used --format=csv,noheader) used; processes: $(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader | tr '\n' ' ')"
  timeout "$(left)" $S --ops --gpus 1,2,4,8 --breakdown 1,32,512,8192 --out "$T" > "$W/ops.log" 2>&1
  stamp "$M ops rc=$? after $((SECONDS - START)) s: $(tail -1 "$W/ops.log")"
  [ -f "$measured" ] && [ -f "$T" ] && check after
  for f in before after; do [ -f "$W/compare_$f.txt" ] && cp "$W/compare_$f.txt" "$OUT/${M}_compare_$f.txt"; done
  tar czf "$OUT/$M.tgz" -C /tmp/refresh "$M"
done
tar czf "$OUT/op_tables.tgz" shifttune/data/op_tables
