#!/usr/bin/env bash
# Session 19's one-GPU checks (each part < 10 min), from the repository root of a snapshot (carry: the snapshot,
# wheels; old_paged_attention.py in it = shifttune/kernels/paged_attention.py before the small-step rule, ff59bde):
#   PART=a bash profiles/commands/s19_gpu.sh   # decode attention with the small-step launch rule (issue 14):
#       attention_bench --decode against the kernel file before it (8B heads; a TP rank of 70B at TP 4 and 8); the
#       engine's decode step with the rule and the one before it, twice each, and without attention
#       (decode_attention_marginal.py); tests/test_gpu.py and the kernels' GPU tests
#   PART=b bash profiles/commands/s19_gpu.sh   # the engine's decode step at batch 1-2, 2k-32k under launch rules of
#       the paged kernel (decode_attention_marginal.py --rules: the tree's, before session 19, merge change only, two
#       other small-step options)
#   HQ=32 HK=8 PART=c bash profiles/commands/s19_gpu.sh   # wide_split_probe.py: every launch option (1-4 programs
#       per SM, tile 32/64, 2/4 warps, 1/3 stages; run at f9c8830 also with and without a one-tile path since dropped,
#       --one-tile 0,1) on every row (batch 1-8 x
#       2k-32k) at these head counts (8B: 32/8; a TP rank of 70B: 16/2 at TP 4, 8/1 at TP 8)
#   PART=d bash profiles/commands/s19_gpu.sh   # wide_split_probe.py at batch 1-2 (8B heads): what the merge costs
#       (kernel merge with 16-64 columns a program, the last split merging, no merge at all)
#   PART=e bash profiles/commands/s19_gpu.sh   # the decode step on this tree and on gpu_prev/ (another snapshot,
#       carried beside it), alternately twice each (decode_attention_marginal.py at batch 1-4, 2k and 8k)
#   (part f, one cooperative launch whose splits merge together, ran at b47b14d: the kernel lives in
#   wide_split_probe.py there, dropped after)
# Into $OUT: check.log, decode_attention*.json, marginal.json, tests.log (a); marginal_rules.json (b);
# wide_split_hq<HQ>_hk<HK>.json (c); merge_cost.json (d); marginal_{this,prev}_{1,2}.json (e)
. "$(dirname "$0")/gpu_setup.sh"
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
if [ "${PART:-a}" = a ]; then
  timeout 200 python -m shifttune.profile.attention_bench --decode --no-sweep --old-kernel old_paged_attention.py \
    --out "$OUT/decode_attention.json" 2>&1 | grep -v -i warn | cut -c1-300 | tee -a "$LOG"
  for h in "16 2" "8 1"; do
    set -- $h
    timeout 150 python -m shifttune.profile.attention_bench --decode --no-sweep --hq $1 --hk $2 \
      --batches 1,2,4,8,16,32 --contexts 2048,8192,32768 --old-kernel old_paged_attention.py \
      --out "$OUT/decode_attention_hq$1_hk$2.json" 2>&1 | grep -E "^decode  b=|worst" | tee -a "$LOG"
  done
  timeout 300 python profiles/commands/decode_attention_marginal.py --batches 1,2,4 --contexts 2048,8192 \
    --rules default,off/m128,default,off/m128 --out "$OUT/marginal.json" 2>&1 | grep -E "^b=.*floor|Error" \
    | cut -c1-400 | tee -a "$LOG"
  timeout 260 python -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_kernels.py > "$OUT/tests.log" 2>&1
  stamp "tests/test_gpu.py + tests/test_kernels.py rc=$?: $(tail -1 "$OUT/tests.log")"
  grep -E "FAILED|Error" "$OUT/tests.log" | head -10 | cut -c1-300 | tee -a "$LOG"
fi
if [ "$PART" = b ]; then
  timeout 570 python profiles/commands/decode_attention_marginal.py --batches 1,2 --contexts 2048,8192,32768 \
    --rules default,off/m128,off,p2_t64_w4_s1,p4_t32_w4_s1 --out "$OUT/marginal_rules.json" 2>&1 \
    | grep -E "^b=|^rule|Error" | cut -c1-400 | tee -a "$LOG"
fi
if [ "$PART" = c ]; then
  rows=1x2048,1x8192,1x32768,2x2048,2x8192,2x32768,4x2048,4x8192,4x32768,8x2048,8x8192,8x32768
  timeout 560 python profiles/commands/wide_split_probe.py --hq "${HQ:-32}" --hk "${HK:-8}" --search $rows --keep 0 \
    --per-sm 1,2,4 --tiles 32,64 --warps 2,4 --stages 1,3 --merges 32 \
    --out "$OUT/wide_split_hq${HQ:-32}_hk${HK:-8}.json" 2>&1 | grep -E "^b=|Error" | cut -c1-300 | tee -a "$LOG"
fi
if [ "$PART" = d ]; then
  timeout 400 python profiles/commands/wide_split_probe.py --search 1x2048,2x2048,1x8192,2x8192 --keep 0 \
    --per-sm 2,4 --tiles 64 --warps 2,4 --stages 1 --merges 16,32,64 --merge-modes kernel,fused,none \
    --out "$OUT/merge_cost.json" 2>&1 | grep -E "^b=|Error" | cut -c1-300 | tee -a "$LOG"
fi
if [ "$PART" = e ]; then
  for i in 1 2; do
    for tree in this prev; do
      dir=.; [ $tree = prev ] && dir=gpu_prev
      (cd $dir && PYTHONPATH=$PWD timeout 140 python profiles/commands/decode_attention_marginal.py --batches 1,2,4 \
        --contexts 2048,8192 --iters 50 --out "$OUT/marginal_${tree}_$i.json" 2>&1 | grep -E "^b=.*floor|Error" \
        | sed "s/^/$tree $i: /" | cut -c1-300 | tee -a "$LOG")
    done
  done
fi
