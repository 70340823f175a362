#!/usr/bin/env bash
# Session 28's device checks, from the repository root (carry: wheels):
#   PART=probe bash profiles/commands/s28_gpu.sh   # issue 14: wide_split_probe --options on three head layouts (32/8:
#     Llama-3.1-8B; 16/2 and 8/1: a TP-4 / TP-8 rank of Llama-3.3-70B), batch 1-16 x 2k-32k: the engine's launch rule
#     and options (OPTS_4, OPTS_8 below) such as wide tiles (one 128-key tile a split at 2k); for each tree of TREES (default "before after"): "after" is this tree, another one gpu_old/s28_<tree>/ (carried;
#     before = 7f92c5c's shifttune/, whose kernel-merge launches compute and store empty splits' partials)
#   PART=marginal bash profiles/commands/s28_gpu.sh   # decode_attention_marginal.py (Llama-3.1-8B dummy, batch 1, 2, 4
#     at 2k and 8k: attention's cost inside the engine's decode graph) on each tree of TREES
#   PART=tests bash profiles/commands/s28_gpu.sh   # tests/test_gpu.py tests/test_kernels.py, at most TESTS_TIMEOUT s
#   PART=client bash profiles/commands/s28_gpu.sh   # serve_vs_offline --cases inf --trace (llama-3.1-8b dummy) run from
#     each tree of TREES: the bench's client, server and engine of gpu_old/s28_before (7f92c5c), then of this tree (the
#     burst sent a few requests at a time), ROUNDS times
# PART may list several parts ("probe marginal").
# Into $OUT: check.log and each part's logs / JSON
. "$(dirname "$0")/gpu_setup.sh"
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tr '\n' ';')"
for part in ${PART:-probe}; do
case "$part" in
probe)
  # OPTS_4 / OPTS_8: the options timed for GQA groups of 4 / 8 (session 28's first call, a_probe_h100, timed more:
  # OPTS_4 and OPTS_8 there were this OPTS_4 plus _fused and _none variants and p4_t128_w4_s1_mdc32, this OPTS_8 plus
  # _fused variants, p2_t64_w4_s1_mdc32, p1_t128_w4_s1_mdc32 and p4_t128_w4_s1_mdc32)
  OPTS_4=${OPTS_4:-p4_t64_w2_s1_mdc32,p1_t128_w4_s1_mdc32,p2_t128_w4_s1_mdc32}
  OPTS_8=${OPTS_8:-p4_t32_w4_s1_mdc32,p2_t128_w4_s1_mdc32}
  for tree in ${TREES:-before after}; do
    path=$(tree_path "$tree")
    for spec in ${LAYOUTS:-32/8 16/2 8/1}; do
      hq=${spec%%/*}; hk=${spec##*/}; opts=$OPTS_4; batches=1,2,4,8
      [ $((hq / hk)) -gt 4 ] && opts=$OPTS_8 && batches=${BATCHES_8:-1,2,4,6,8,12,16}
      name=probe_${tree}_${hq}_${hk}; T0=$SECONDS
      CUDA_VISIBLE_DEVICES=0 PYTHONPATH=$path timeout "${PROBE_TIMEOUT:-170}" python profiles/commands/wide_split_probe.py \
        --hq "$hq" --hk "$hk" --options "$opts" --batches "$batches" --contexts 2048,4096,8192,32768 \
        --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
      stamp "wide_split_probe $tree $hq/$hk rc=$? in $((SECONDS - T0)) s"
      grep -E "^b=" "$OUT/$name.log" | tee -a "$LOG"
    done
  done
  (cd "$OUT" && tar czf probe.tgz probe_* && rm -f probe_*) ;;
marginal)
  for tree in ${TREES:-before after}; do
    path=$(tree_path "$tree")
    T0=$SECONDS
    CUDA_VISIBLE_DEVICES=0 PYTHONPATH=$path timeout "${MARGINAL_TIMEOUT:-150}" python \
      profiles/commands/decode_attention_marginal.py --batches 1,2,4 --contexts 2048,8192 \
      --out "$OUT/marginal_$tree.json" > "$OUT/marginal_$tree.log" 2>&1
    stamp "decode_attention_marginal $tree rc=$? in $((SECONDS - T0)) s"
    grep -v -i warn "$OUT/marginal_$tree.log" | tail -8 | tee -a "$LOG"
  done
  (cd "$OUT" && tar czf marginal.tgz marginal_* && rm -f marginal_*) ;;
client)
  python -m pip install -q --no-index --find-links wheels fastapi uvicorn prometheus_client httpx > /dev/null 2>&1
  for r in $(seq "${ROUNDS:-1}"); do
    for tree in ${TREES:-before after}; do
      T0=$SECONDS
      CUDA_VISIBLE_DEVICES=0 in_tree "$tree" "${SERVE_TIMEOUT:-280}" python -m \
        shifttune.bench.serve_vs_offline --model llama-3.1-8b --device cuda --cases inf --trace \
        --out "$OUT/svo_${tree}_$r.json" > "$OUT/svo_${tree}_$r.log" 2>&1
      stamp "serve_vs_offline $tree round $r rc=$? in $((SECONDS - T0)) s"
      grep -E "^c=" "$OUT/svo_${tree}_$r.log" | tee -a "$LOG"
    done
  done
  (cd "$OUT" && tar czf client.tgz svo_* && rm -f svo_*) ;;
tests)
  gpu_tests "${TESTS_TIMEOUT:-480}" ;;
esac
done
