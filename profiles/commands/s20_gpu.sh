#!/usr/bin/env bash
# Session 20's one-GPU check (< 10 min), ran at 816c834, the one commit with EARLY_KV (reverted after: slower), from
# the repository root (carry: wheels, gpu_old with
# gpu_old/paged_attention_head.py = shifttune/kernels/paged_attention.py of the commit before EARLY_KV):
#   bash profiles/commands/s20_gpu.sh
# Decode attention with small steps loading their first tile's cached K/V before the PDL wait (EARLY_KV, issue 14):
# attention_bench --decode against the kernel file before it (8B heads; a TP rank of 70B at TP 4 and 8); the
# engine's decode step with EARLY_KV on and off, alternately twice each, and without attention
# (decode_attention_marginal.py --rules default,default/e0,...); the kernels' and the engine's GPU tests.
# Into $OUT: check.log, decode_attention*.json, marginal.json, tests.log
#   PART=b bash profiles/commands/s20_gpu.sh   # PDL in the fused kernels (RMSNorm, RoPE, SiLU): the 8B decode step at
#       batch 1-128, 2k, with it off and on, alternately twice (fused_pdl_probe.py); one TP rank's 70B decode layer
#       at TP 4 and 8 with it off and on (tp_decode_layer_probe.py --fused-pdl); the fused kernels' GPU tests.
#       Into $OUT: check.log, fused_pdl.json, tp_layer_{off,on}.json, tests.log
. "$(dirname "$0")/gpu_setup.sh"
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
#   PART=c bash profiles/commands/s20_gpu.sh   # part b's two probes again, the layer probe at TP 8 only, twice
#   PART=d bash profiles/commands/s20_gpu.sh   # fused_pdl_probe.py after its rewrite on decode_attention_marginal's
#       step_ms (batch 1 and 32, off and on), and the loop (loop_overhead.py, batch 1 and 32 at 2k, greedy) with PDL on
#   PART=e bash profiles/commands/s20_gpu.sh   # the shipped llama-3.1-8b op table of this card against today's
#       engine: a measured P = 1 profile, the predicted one from the shipped table and --compare; then the table
#       measured again (P = 1, 2, 4, 8; it lands in shifttune/data/op_tables/ and in $OUT/e.tgz) and --compare
#       of its prediction. Into $OUT: check.log, compare_{shipped,new}.txt, e.tgz (everything, the new table too)
if [ "${PART:-a}" = e ]; then
  M=llama-3.1-8b S="python -m shifttune.cli profile --model llama-3.1-8b" W=/tmp/s20e && mkdir -p $W
  G=$(python -c "import torch; from shifttune.recommend.gpus import gpu_slug; print(gpu_slug(torch.cuda.get_device_name(0)))")
  T=shifttune/data/op_tables/${M}_$G.json
  timeout 200 $S --gpus 1 --iters 5 --warmup 2 --no-tui --out $W/measured_${M}_${G}x1.json > $W/measured.log 2>&1
  stamp "measured P = 1 rc=$?: $(tail -1 $W/measured.log)"
  for t in shipped new; do
    if [ $t = new ]; then
      rm -f $T && timeout 330 $S --ops --gpus 1,2,4,8 --out $T > $W/ops.log 2>&1
      stamp "ops rc=$?: $(tail -1 $W/ops.log)"
    fi
    [ -f $T ] || { stamp "$t: no table $T"; continue; }
    cp $T $W/table_$t.json
    $S --predict --gpus "1x$G" --op-table $T --out $W/predicted_$t.json > $W/predict_$t.log 2>&1
    python -m shifttune.cli profile --compare $W/measured_${M}_${G}x1.json $W/predicted_$t.json \
      --out $W/compare_$t.json > $W/compare_$t.txt 2>&1
    stamp "$t table: $(grep -i -E "median|p90" $W/compare_$t.txt | head -3 | tr '\n' ' ')"
    cp $W/compare_$t.txt "$OUT/"
  done
  tar czf "$OUT/e.tgz" -C $W .
  exit 0
fi
if [ "${PART:-a}" = d ]; then
  timeout 200 python profiles/commands/fused_pdl_probe.py --batches 1,32 --rules off,on --out "$OUT/fused_pdl.json" \
    2>&1 | grep -E "^b=.*floor|Error" | cut -c1-300 | tee -a "$LOG"
  timeout 300 python -m shifttune.profile.loop_overhead --model llama-3.1-8b --cases 0,1 --no-offline \
    --out "$OUT/loop_overhead.json" 2>&1 | grep -v -i warn | grep -E "batch|Error" | cut -c1-300 | tee -a "$LOG"
  exit 0
fi
if [ "${PART:-a}" = c ]; then
  timeout 330 python profiles/commands/fused_pdl_probe.py --rules off,on,off,on --out "$OUT/fused_pdl.json" 2>&1 \
    | grep -E "^b=.*floor|Error" | cut -c1-300 | tee -a "$LOG"
  for r in off on off on; do
    n=$(ls "$OUT"/tp_layer_"$r"*.json 2>/dev/null | wc -l)
    timeout 100 python profiles/commands/tp_decode_layer_probe.py --tp 8 --batches 1,8,32 --fused-pdl $r \
      --out "$OUT/tp_layer_${r}_$((n + 1)).json" 2>&1 | grep -E "^TP|Error" | sed "s/^/$r: /" | cut -c1-200 | tee -a "$LOG"
  done
  exit 0
fi
if [ "${PART:-a}" = b ]; then
  timeout 330 python profiles/commands/fused_pdl_probe.py --rules off,on,off,on --out "$OUT/fused_pdl.json" 2>&1 \
    | grep -E "^b=.*floor|Error" | cut -c1-300 | tee -a "$LOG"
  for r in off on; do
    timeout 100 python profiles/commands/tp_decode_layer_probe.py --tp 4,8 --batches 1,8,32 --fused-pdl $r \
      --out "$OUT/tp_layer_$r.json" 2>&1 | grep -E "^TP|Error" | sed "s/^/$r: /" | cut -c1-200 | tee -a "$LOG"
  done
  timeout 100 python -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_kernels.py -k "fused or rope or norm or silu or pdl" > "$OUT/tests.log" 2>&1
  stamp "tests rc=$?: $(tail -1 "$OUT/tests.log")"
  exit 0
fi
# NOTE: part a (the rest of this file) needs 816c834's tree: EARLY_KV and the marginal probe's e0 rule were reverted
python -c "import shifttune.kernels.paged_attention as pa; pa.EARLY_KV" 2>/dev/null \
  || { stamp "part a runs at 816c834 only (EARLY_KV)"; exit 2; }
timeout 200 python -m shifttune.profile.attention_bench --decode --no-sweep --old-kernel gpu_old/paged_attention_head.py \
  --out "$OUT/decode_attention.json" 2>&1 | grep -v -i warn | cut -c1-300 | tee -a "$LOG"
for h in "16 2" "8 1"; do
  set -- $h
  timeout 150 python -m shifttune.profile.attention_bench --decode --no-sweep --hq $1 --hk $2 \
    --batches 1,2,4,8,16,32 --contexts 2048,8192,32768 --old-kernel gpu_old/paged_attention_head.py \
    --out "$OUT/decode_attention_hq$1_hk$2.json" 2>&1 | grep -E "^decode  b=|worst" | tee -a "$LOG"
done
timeout 330 python profiles/commands/decode_attention_marginal.py --batches 1,2,4 --contexts 2048,8192 --iters 50 \
  --rules default,default/e0,default,default/e0 --out "$OUT/marginal.json" 2>&1 | grep -E "^b=.*floor|Error" \
  | cut -c1-400 | tee -a "$LOG"
timeout 280 python -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_kernels.py \
  tests/test_prefill_attention.py > "$OUT/tests.log" 2>&1
stamp "tests rc=$?: $(tail -1 "$OUT/tests.log")"
grep -E "FAILED|Error" "$OUT/tests.log" | head -10 | cut -c1-300 | tee -a "$LOG"
