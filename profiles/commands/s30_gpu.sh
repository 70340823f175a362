#!/usr/bin/env bash
# Session 30's device checks, from the repository root (carry: wheels):
#   PART=cluster bash profiles/commands/s30_gpu.sh   # issue 14: cluster_decode_probe.py (decode attention at batch 1-2
#     in one launch, the splits merged through distributed shared memory), next to the engine's attention
#   PART=tests bash profiles/commands/s30_gpu.sh     # tests/test_gpu.py tests/test_kernels.py, at most TESTS_TIMEOUT s
# PART may list several parts ("cluster tests"). Into $OUT: check.log and each part's logs / JSON
. "$(dirname "$0")/gpu_setup.sh"
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tr '\n' ';')"
for part in ${PART:-cluster}; do
case "$part" in
cluster)
  T0=$SECONDS
  timeout "${CLUSTER_TIMEOUT:-300}" python profiles/commands/cluster_decode_probe.py --out "$OUT/cluster_decode.json" \
    ${CLUSTER_ARGS:-} > "$OUT/cluster_decode.log" 2>&1
  stamp "cluster_decode_probe rc=$? in $((SECONDS - T0)) s"
  grep -v -i warn "$OUT/cluster_decode.log" | tail -8 | cut -c1-2000 | tee -a "$LOG" ;;
tests)
  gpu_tests "${TESTS_TIMEOUT:-480}" ;;
esac
done
