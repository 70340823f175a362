#!/usr/bin/env bash
# Session 29's device checks, from the repository root (carry: wheels):
#   PART=floor bash profiles/commands/s29_gpu.sh   # issue 14: split_floor_probe.py (the least a split-KV decode
#     attention takes here: read the bytes, then merge, with no math) at 2048 and 4096 tokens, next to the engine's
#     attention at batch 1 and 2, 2k
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
tests)
  gpu_tests "${TESTS_TIMEOUT:-480}" ;;
esac
done
