#!/usr/bin/env bash
# Session 28's device checks, from the repository root (carry: wheels):
#   PART=probe bash profiles/commands/s28_gpu.sh   # issue 14: wide_split_probe --options on three head layouts (32/8:
#     Llama-3.1-8B; 16/2 and 8/1: a TP-4 / TP-8 rank of Llama-3.3-70B), batch 1-16 x 2k-32k: wide tiles (one 128-key
#     tile a split at 2k), the last split merging (fused), and no merge (none: what the attention launch alone costs);
#     for each tree of TREES (default "before after"): "after" is this tree, another one gpu_old/s28_<tree>/ (carried;
#     before = 7f92c5c's shifttune/, whose kernel-merge launches compute and store empty splits' partials)
#   PART=tests bash profiles/commands/s28_gpu.sh   # tests/test_gpu.py tests/test_kernels.py, at most TESTS_TIMEOUT s
# Into $OUT: check.log and each part's logs / JSON
. "$(dirname "$0")/gpu_setup.sh"
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tr '\n' ';')"
case "${PART:-probe}" in
probe)
  OPTS_4="p4_t64_w2_s1_mdc32,p4_t64_w2_s1_mdc32_fused,p4_t64_w2_s1_mdc32_none,p1_t128_w4_s1_mdc32,p1_t128_w4_s1_mdc32_fused"
  OPTS_4="$OPTS_4,p1_t128_w4_s1_mdc32_none,p2_t128_w4_s1_mdc32,p2_t128_w4_s1_mdc32_fused,p4_t128_w4_s1_mdc32"
  OPTS_4="$OPTS_4,p4_t128_w4_s1_mdc32_fused,p4_t128_w4_s1_mdc32_none"
  OPTS_8="p4_t32_w4_s1_mdc32,p4_t32_w4_s1_mdc32_fused,p2_t64_w4_s1_mdc32,p2_t128_w4_s1_mdc32,p2_t128_w4_s1_mdc32_fused"
  OPTS_8="$OPTS_8,p1_t128_w4_s1_mdc32,p4_t128_w4_s1_mdc32,p4_t128_w4_s1_mdc32_fused"
  for tree in ${TREES:-before after}; do
    path=$PWD; [ "$tree" != after ] && path=$PWD/gpu_old/s28_$tree
    for spec in ${LAYOUTS:-32/8 16/2 8/1}; do
      hq=${spec%%/*}; hk=${spec##*/}; opts=$OPTS_4; batches=1,2,4,8
      [ $((hq / hk)) -gt 4 ] && opts=$OPTS_8 && batches=1,2,4,8,16
      name=probe_${tree}_${hq}_${hk}; T0=$SECONDS
      CUDA_VISIBLE_DEVICES=0 PYTHONPATH=$path timeout "${PROBE_TIMEOUT:-170}" python profiles/commands/wide_split_probe.py \
        --hq "$hq" --hk "$hk" --options "$opts" --batches "$batches" --contexts 2048,4096,8192,32768 \
        --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
      stamp "wide_split_probe $tree $hq/$hk rc=$? in $((SECONDS - T0)) s"
      grep -E "^b=" "$OUT/$name.log" | tee -a "$LOG"
    done
  done
  (cd "$OUT" && tar czf probe.tgz probe_* && rm -f probe_*) ;;
tests)
  T0=$SECONDS
  timeout "${TESTS_TIMEOUT:-480}" python -m pytest -q -p no:cacheprovider --durations=10 tests/test_gpu.py \
    tests/test_kernels.py > "$OUT/tests.log" 2>&1
  stamp "tests/test_gpu.py tests/test_kernels.py rc=$? in $((SECONDS - T0)) s: $(tail -1 "$OUT/tests.log")"
  grep -E "FAILED|Error" "$OUT/tests.log" | head -10 | cut -c1-300 | tee -a "$LOG" ;;
esac
