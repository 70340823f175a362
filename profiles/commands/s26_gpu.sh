#!/usr/bin/env bash
# Session 26's device checks, from the repository root (carry: wheels):
#   PART=tests bash profiles/commands/s26_gpu.sh   # on 2 GPUs: tests/test_gpu.py and tests/test_kernels.py (every case
#     that runs on the GPUs present), at most TESTS_TIMEOUT s (default 480): the shutdown mends of session 25
#     (d9483ea, 5f608af, 9c4eb9d) had only run on CPU
# Into $OUT: check.log, tests.log
. "$(dirname "$0")/gpu_setup.sh"
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tr '\n' ';')"
if [ "${PART:-tests}" = tests ]; then
  T0=$SECONDS
  timeout "${TESTS_TIMEOUT:-480}" python -m pytest -q -p no:cacheprovider --durations=10 tests/test_gpu.py \
    tests/test_kernels.py > "$OUT/tests.log" 2>&1
  stamp "tests/test_gpu.py tests/test_kernels.py rc=$? in $((SECONDS - T0)) s: $(tail -1 "$OUT/tests.log")"
  grep -E "FAILED|Error" "$OUT/tests.log" | head -10 | cut -c1-300 | tee -a "$LOG"
fi
