#!/usr/bin/env bash
# Session 23's one-GPU checks, one device call of < 10 min, from the repository root (carry: wheels, gpu_old with
# gpu_old/paged_attention_head.py = shifttune/kernels/paged_attention.py before the guessed sequence, at 0a91fa9):
#   PART=a bash profiles/commands/s23_gpu.sh
#     1. attention_bench --decode (Llama-3.1-8B heads, batch 1-8 x 2k / 4k / 8k / 32k) on this tree's
#        kernel and on the file before it, row by row in one process, twice (issue 14's decode item);
#     2. the engine's GPU tests (tests/test_gpu.py, tests/test_kernels.py).
#   PART=b bash profiles/commands/s23_gpu.sh   # after the split rule moved to kernels/split_kv.py (torch-free):
#     the engine's GPU tests; attention_bench --decode at batch 1-2, 2k (its knobs now read from split_kv);
#     decode_attention_marginal.py with the rule before session 19 ("off", patched through split_kv) and the default
#   PART=c bash profiles/commands/s23_gpu.sh   # the decode step at batch 1-2, 2k / 8k under the small-step rule and
#     the rule before it ("off", with today's and with a 128-column merge), three times each in turn
#   PART=d bash profiles/commands/s23_gpu.sh   # GPU tests (sp_cuda_graph_tokens_per_gpu off, the default), then
#     eager_host_probe.py with the engine's SP-graph rule (512 tokens per GPU) against eager, one rank a layout
# Into $OUT: check.log, decode_attention_{1,2}.json, tests.log (a); tests_b.log, decode_attention_b.json,
# marginal_b.json (b); marginal_c.json (c); tests_d.log, sp_graphs.json (d)
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
if [ "${PART:-a}" = b ]; then
  timeout 240 python -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_kernels.py > "$OUT/tests_b.log" 2>&1
  stamp "tests/test_gpu.py + tests/test_kernels.py rc=$?: $(tail -1 "$OUT/tests_b.log")"
  grep -E "FAILED|Error" "$OUT/tests_b.log" | head -10 | cut -c1-300 | tee -a "$LOG"
  timeout 90 python -m shifttune.profile.attention_bench --decode --no-sweep --batches 1,2 --contexts 2048 \
    --out "$OUT/decode_attention_b.json" 2>&1 | grep -E "^decode +b=|worst|Error" | cut -c1-300 | tee -a "$LOG"
  timeout 200 python profiles/commands/decode_attention_marginal.py --batches 1,2 --contexts 2048 --iters 20 \
    --rules default,off --out "$OUT/marginal_b.json" 2>&1 | grep -E "^b=|^rule|Error" | cut -c1-300 | tee -a "$LOG"
fi
if [ "${PART:-a}" = c ]; then
  timeout 560 python profiles/commands/decode_attention_marginal.py --batches 1,2 --contexts 2048,8192 --iters 30 \
    --rules default,off,off/m128,default,off,off/m128,default,off,off/m128 --out "$OUT/marginal_c.json" 2>&1 \
    | grep -E "^b=.*floor|Error" | cut -c1-400 | tee -a "$LOG"
fi
if [ "${PART:-a}" = d ]; then  # the SP-graph knob: GPU tests as shipped (off), then the rule on one rank
  # (k_sp_graph_rule ran this at 3aab7c9 as --sp-graph-tokens-per-rank 1024: 1024 x SP tokens)
  timeout 240 python -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_kernels.py > "$OUT/tests_d.log" 2>&1
  stamp "tests/test_gpu.py + tests/test_kernels.py rc=$?: $(tail -1 "$OUT/tests_d.log")"
  grep -E "FAILED|Error" "$OUT/tests_d.log" | head -10 | cut -c1-300 | tee -a "$LOG"
  timeout 300 python profiles/commands/eager_host_probe.py --layouts ${LAYOUTS:-tp:4:1,sp:1:4,sp:2:4,sp:1:8} \
    --steps ${STEPS:-4096x8192,4096x4096,8192x8192} --sp-graph-tokens-per-gpu 512 --out "$OUT/sp_graphs.json" 2>&1 \
    | grep -E "^(tp|sp) |Error" | tee -a "$LOG"
fi
