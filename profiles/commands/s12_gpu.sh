#!/usr/bin/env bash
# Session 12's GPU checks, two one-GPU device calls (each < 10 min), from the repository root (carry: wheels,
# gpu_old; gpu_old/s11 = `git archive 5a825e4`, the tree before the one-launch greedy sampler and bf16 logits):
#   PART=a bash profiles/commands/s12_gpu.sh   # GPU tests; issue 10's loop benchmark on this tree and on s11
#   PART=b bash profiles/commands/s12_gpu.sh   # issue 14: the SDPA prefix-chunk GPU tests; decode attention at
#       batch 1-8 beside a one-load launch in the same graph; TTFT and first/warm at 32k, 64k and 128k - 1, and 32k
#       on s11 (before the one-launch merge of the two SDPA parts)
#   PART=c bash profiles/commands/s12_gpu.sh   # after the no-copy SDPA views: GPU tests; TTFT and first/warm at
#       8k, 32k and 128k - 1; 32k on s11 again
# Into $OUT: check.log, tests.log, loop_overhead.json, loop_overhead_before.json (a); tests_b.log,
# decode_attention.json, long_prompts.json, long_prompts_before.json (b); tests_c.log, long_prompts.json,
# long_prompts_before.json (c).
. "$(dirname "$0")/gpu_setup.sh"
long_prompts() {  # seconds, lengths: TTFT and first/warm on this tree
  timeout "$1" python -m shifttune.profile.long_prompts --model llama-3.1-8b --paths sdpa --lengths "$2" \
    --no-layer-bench --out "$OUT/long_prompts.json" 2>&1 | grep -v -i warn | tail -9 | tee -a "$LOG"
}
long_prompts_before() {  # 32k on gpu_old/s11, in the same call
  stamp "before (gpu_old/s11), 32k:"
  (cd gpu_old/s11 && PYTHONPATH=$PWD timeout 100 python -m shifttune.profile.long_prompts --model llama-3.1-8b \
    --paths sdpa --lengths 32768 --no-layer-bench --out "$OUT/long_prompts_before.json" 2>&1 | grep -v -i warn \
    | tail -4 | tee -a "$LOG")
}
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
if [ "${PART:-a}" = a ]; then
  timeout 150 python -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$OUT/tests.log" 2>&1
  stamp "tests/test_gpu.py rc=$?: $(tail -1 "$OUT/tests.log")"
  timeout 120 python -m pytest -q -p no:cacheprovider tests/test_kernels.py -k "gpu or graph_inputs" >> "$OUT/tests.log" 2>&1
  stamp "kernel tests rc=$?: $(tail -1 "$OUT/tests.log")"
  timeout 120 python -m pytest -q -p no:cacheprovider tests/test_sampling.py -k "kernel or greedy or bf16" >> "$OUT/tests.log" 2>&1
  stamp "sampler kernel tests (compiled) rc=$?: $(tail -1 "$OUT/tests.log")"
  timeout 170 python -m shifttune.profile.loop_overhead --model llama-3.1-8b --out "$OUT/loop_overhead.json" 2>&1 \
    | grep -v -i warn | tee -a "$LOG"
  stamp "before (gpu_old/s11):"
  cp shifttune/profile/loop_overhead.py /tmp/loop_overhead.py
  (cd gpu_old/s11 && PYTHONPATH=$PWD timeout 170 python /tmp/loop_overhead.py --model llama-3.1-8b \
    --out "$OUT/loop_overhead_before.json" 2>&1 | grep -v -i warn | tee -a "$LOG")
elif [ "${PART}" = c ]; then
  timeout 150 python -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$OUT/tests_c.log" 2>&1
  stamp "tests/test_gpu.py rc=$?: $(tail -1 "$OUT/tests_c.log")"
  timeout 120 python -m pytest -q -p no:cacheprovider tests/test_prefill_attention.py tests/test_kernels.py \
    -k "cudnn or merge_by_lse or gpu" >> "$OUT/tests_c.log" 2>&1
  stamp "SDPA, merge and kernel GPU tests rc=$?: $(tail -1 "$OUT/tests_c.log")"
  long_prompts 200 8192,32768,131071
  long_prompts_before
else
  timeout 120 python -m pytest -q -p no:cacheprovider tests/test_prefill_attention.py tests/test_kernels.py \
    -k "cudnn or merge_by_lse" > "$OUT/tests_b.log" 2>&1
  stamp "SDPA prefix-chunk and merge tests rc=$?: $(tail -1 "$OUT/tests_b.log")"
  timeout 150 python -m shifttune.profile.attention_bench --decode --batches 1,2,4,8 --contexts 2048,8192,32768 \
    --out "$OUT/decode_attention.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
  long_prompts 220 32768,65536,131071
  long_prompts_before
fi
stamp done
