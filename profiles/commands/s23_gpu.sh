#!/usr/bin/env bash
# Session 23's one-GPU checks, one device call of < 10 min, from the repository root (carry: wheels, gpu_old with
# gpu_old/paged_attention_head.py = shifttune/kernels/paged_attention.py before the guessed sequence, at 0a91fa9):
#   PART=a bash profiles/commands/s23_gpu.sh
#     1. attention_bench --decode (Llama-3.1-8B heads, batch 1-8 x 2k / 4k / 8k / 32k) on this tree's
#        kernel and on the file before it, row by row in one process, twice (issue 14's decode item);
#     2. the engine's GPU tests (tests/test_gpu.py, tests/test_kernels.py).
# Into $OUT: check.log, decode_attention_{1,2}.json, tests.log
. "$(dirname "$0")/gpu_setup.sh"
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
if [ "${PART:-a}" = a ]; then
  for i in 1 2; do
    timeout 150 python -m shifttune.profile.attention_bench --decode --no-sweep --batches 1,2,4,8 \
      --contexts 2048,4096,8192,32768 \
      --old-kernel gpu_old/paged_attention_head.py --out "$OUT/decode_attention_$i.json" 2>&1 \
      | grep -E "^(decode|prefill|chunk) +b=|worst|Error" | cut -c1-300 | sed "s/^/run $i: /" | tee -a "$LOG"
  done
  timeout 240 python -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_kernels.py > "$OUT/tests.log" 2>&1
  stamp "tests/test_gpu.py + tests/test_kernels.py rc=$?: $(tail -1 "$OUT/tests.log")"
  grep -E "FAILED|Error" "$OUT/tests.log" | head -10 | cut -c1-300 | tee -a "$LOG"
fi
