#!/usr/bin/env bash
# Issue 10's loop benchmark on this tree and on the tree before it, in one one-GPU device call (~7 min), plus
# the GPU tests and the first-request check of issue 14. From the repository root (carry: wheels, gpu_old;
# gpu_old/s10 = `git archive 28050d5`, the tree before session 11's one-launch graph inputs):
#   bash profiles/commands/loop_before_after_gpu.sh
# 1. tests/test_gpu.py and the kernel tests on the GPU (the graph-inputs kernel against the torch path);
# 2. loop_overhead on this tree: the busy/idle timeline of cases 0, 1, 3, 6, then every case timed with the
#    batch-1 breakdown and offline throughput; 3. the same script file on gpu_old/s10 (the "before" numbers,
#    same card, same call); 4. long_prompts at 8k and 32k: first request against warm ones, wall and device.
# Into $OUT: check.log, loop_timeline.json, loop_overhead.json, loop_overhead_before.json, long_prompts.json,
# tests.log. TESTS=0 skips 1, BEFORE=0 skips 3, LONG=0 skips 4, TIMELINE_CASES picks the cases of the timeline (default 0,1,3,6).
set -u
OUT=${OUT:-/tmp/out}
export PYTHONUNBUFFERED=1
LOG=$OUT/check.log
python -m pip install -q --no-index --find-links wheels pytest pytest-timeout hypothesis > /dev/null 2>&1
stamp() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
export PYTHONPATH=$PWD
if [ "${TESTS:-1}" = 1 ]; then
  timeout 150 python -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$OUT/tests.log" 2>&1
  stamp "tests/test_gpu.py rc=$?: $(tail -1 "$OUT/tests.log")"
  timeout 90 python -m pytest -q -p no:cacheprovider tests/test_kernels.py -k "gpu or graph_inputs" >> "$OUT/tests.log" 2>&1
  stamp "kernel tests rc=$?: $(tail -1 "$OUT/tests.log")"
fi
timeout 100 python -m shifttune.profile.loop_overhead --model llama-3.1-8b --cases "${TIMELINE_CASES:-0,1,3,6}" \
  --no-offline --timeline \
  --out "$OUT/loop_timeline.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
timeout 170 python -m shifttune.profile.loop_overhead --model llama-3.1-8b --out "$OUT/loop_overhead.json" 2>&1 \
  | grep -v -i warn | tee -a "$LOG"
if [ "${BEFORE:-1}" = 1 ]; then
  stamp "before (gpu_old/s10):"
  cp shifttune/profile/loop_overhead.py /tmp/loop_overhead.py
  (cd gpu_old/s10 && PYTHONPATH=$PWD timeout 170 python /tmp/loop_overhead.py --model llama-3.1-8b \
    --out "$OUT/loop_overhead_before.json" 2>&1 | grep -v -i warn | tee -a "$LOG")
fi
[ "${LONG:-1}" = 1 ] && timeout 120 python -m shifttune.profile.long_prompts --model llama-3.1-8b --paths sdpa --lengths 8192,32768 --profile-first \
  --no-layer-bench --out "$OUT/long_prompts.json" 2>&1 | grep -v -i warn | tail -10 | tee -a "$LOG"
stamp done
