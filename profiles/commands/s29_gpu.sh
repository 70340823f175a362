#!/usr/bin/env bash
# Session 29's device checks, from the repository root (carry: wheels):
#   PART=floor bash profiles/commands/s29_gpu.sh   # issue 14: split_floor_probe.py (the least a split-KV decode
#     attention takes here: read the bytes, then merge, with no math) at 2048 and 4096 tokens, next to the engine's
#     attention at batch 1 and 2, 2k
#   PART=chunk bash profiles/commands/s29_gpu.sh   # the merge's warps on prefill chunks that split (a TP rank's heads:
#     8/2, 4/1, 16/2, 8/1; one sequence's chunk of 512 or 1024 tokens at 2k / 8k / 32k): wide_split_probe --q-len on
#     each tree of TREES (default "before29 after"; before29: gpu_old/s28_before29, 7ccc2af's shifttune/)
#   PART=tests bash profiles/commands/s29_gpu.sh   # tests/test_gpu.py tests/test_kernels.py, at most TESTS_TIMEOUT s
# PART may list several parts ("floor tests"). Into $OUT: check.log and each part's logs / JSON
. "$(dirname "$0")/gpu_setup.sh"
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tr '\n' ';')"
for part in ${PART:-floor}; do
case "$part" in
floor)
  T0=$SECONDS
  timeout "${FLOOR_TIMEOUT:-240}" python profiles/commands/split_floor_probe.py --out "$OUT/split_floor.json" \
    > "$OUT/split_floor.log" 2>&1
  stamp "split_floor_probe rc=$? in $((SECONDS - T0)) s"
  grep -v -i warn "$OUT/split_floor.log" | tail -4 | tee -a "$LOG" ;;
chunk)
  for tree in ${TREES:-before29 after}; do
    path=$(tree_path "$tree")
    for spec in 8/2 4/1 16/2 8/1; do
      for q in 512 1024; do
        name=chunk_${tree}_${spec%%/*}_${spec##*/}_$q; T0=$SECONDS
        PYTHONPATH=$path timeout 100 python profiles/commands/wide_split_probe.py --hq "${spec%%/*}" --hk "${spec##*/}" \
          --q-len $q --batches 1 --contexts 2048,8192,32768 --options p1_t64_w4_s2_mdc32 --out "$OUT/$name.json" \
          > "$OUT/$name.log" 2>&1
        stamp "chunk $tree $spec q=$q rc=$? in $((SECONDS - T0)) s: $(grep -E '^b=' "$OUT/$name.log" | awk '{print $2, $9}' \
          | tr '\n' ' ')"
      done
    done
  done
  (cd "$OUT" && tar czf chunk.tgz chunk_* && rm -f chunk_*) ;;
tests)
  gpu_tests "${TESTS_TIMEOUT:-480}" ;;
esac
done
