#!/usr/bin/env bash
# CHUNK_SPLIT_GRAPHS on one GPU, in one device call of < 10 min (run from the repository root; carry: wheels):
#   bash profiles/commands/chunk_split_gpu.sh              # 1 and 2
#   PART=tests bash profiles/commands/chunk_split_gpu.sh   # 3
# 1. chunk_split_probe.py (llama-3.1-8b ranks at TP 4 and 8: one sequence's 512-2048-token chunks and mixed steps
#    in the same buckets at 2k / 8k / 32k, off / on alternately twice);
# 2. GPU tests with the knob on (in-process: pytest.main after setting it): the split graphs against HF
#    (test_chunk_split_graphs_on_gpu), the oracle, no Triton compile after start, the shared logits buffer.
# 3. the engine's GPU tests with the knob as shipped (off until session 22, on since).
# Into $OUT: check.log, chunk_split.json, tests_on.log (PART=tests: tests_shipped.log)
. "$(dirname "$0")/gpu_setup.sh"
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
if [ "${PART:-probe}" = tests ]; then
  timeout 540 python -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_kernels.py > "$OUT/tests_shipped.log" 2>&1
  stamp "GPU tests (knob as shipped) rc=$?: $(tail -1 "$OUT/tests_shipped.log")"
  exit 0
fi
timeout 420 python profiles/commands/chunk_split_probe.py --tp 4,8 --out "$OUT/chunk_split.json" 2>&1 \
  | grep -E "^TP=|Error" | tee -a "$LOG"
timeout 150 python -c "
import sys, pytest, shifttune.kernels.split_kv as g
g.CHUNK_SPLIT_GRAPHS = True
sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_gpu.py', '-k', 'chunk_split or oracle_bf16 or compile or shared_logits']))
" > "$OUT/tests_on.log" 2>&1
stamp "GPU tests (knob on) rc=$?: $(tail -1 "$OUT/tests_on.log")"
