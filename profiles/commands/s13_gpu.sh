#!/usr/bin/env bash
# Session 13's one-GPU checks (each part < 10 min), from the repository root (carry: wheels, gpu_old;
# gpu_old/s13a = `git archive 53a89f9`, the tree before the in-place prefix reads and the two-sweep split kernel):
#   PART=a bash profiles/commands/s13_gpu.sh   # issue 14: SDPA GPU tests; TTFT at 8k-128k on this tree; 128k - 1
#       alone in a fresh engine on this tree and on s13a; issue 10: a five-step timeline of batch 256 at 512, sampled
#   PART=b bash profiles/commands/s13_gpu.sh   # after the block manager's next-block rule: issue 14's TTFT table at
#       8k-128k with one 128k chunk's kernel breakdown; issue 10's loop table
#   PART=c bash profiles/commands/s13_gpu.sh   # `_split_kernel` on 4 warps: the one-GPU engine tests (HF oracle, graphs,
#       shutdown, no compiles after start-up); the sampler against its reference and its sweep; issue 10's loop table
#   PART=d bash profiles/commands/s13_gpu.sh   # SDPA GPU tests with block spans; `bench --compare tp --profile` on one
#       GPU (llama-3.1-8b dummy, TP=1, the predicted profile of 1 x this GPU): predicted beside measured, end to end
#   PART=e bash profiles/commands/s13_gpu.sh   # programmatic dependent launch in paged attention (gpu_old/s13b =
#       `git archive 9b886c9`, the tree before it): GPU tests; decode attention at batch 1-8 and the loop's greedy
#       cases (batch 1, 32, 128 at 2k; batch 1 at 8k) on both trees in the same call
#   PART=f bash profiles/commands/s13_gpu.sh   # PDL in RMSNorm, RoPE and SiLU too: GPU tests; the loop's greedy cases
#       and batch-1 floor share on this tree and on gpu_old/s13b (no PDL) in the same call
#   PART=g bash profiles/commands/s13_gpu.sh   # which of the fused kernels' PDL launches slows batch 32: copies of this
#       tree with FUSED_PDL on, with it on but no early trigger in RoPE, and this tree (off); the loop's batch 1 and
#       32 cases at 2k, twice
# Into $OUT: check.log, tests.log, long_prompts.json, long_prompts_128k.json, long_prompts_128k_before.json,
# loop_timeline.json (a); long_prompts.json, loop_overhead.json (b); tests.log, sampler_bench.json,
# loop_overhead.json (c); tests.log, predicted_profile.json, bench_compare_tp.json, bench_tp.log (d); tests.log,
# decode_attention.json, decode_attention_before.json, loop_overhead.json, loop_overhead_before.json (e); tests.log,
# loop_overhead_{1,2}.json, loop_overhead_before_{1,2}.json (f).
. "$(dirname "$0")/gpu_setup.sh"
long_prompts() {  # tree, seconds, lengths, out
  (cd "$1" && PYTHONPATH=$PWD timeout "$2" python -m shifttune.profile.long_prompts --model llama-3.1-8b --paths sdpa \
    --lengths "$3" --no-layer-bench --out "$4" 2>&1 | grep -v -i warn | grep -E "tokens|floor|error|Error" | tail -6 \
    | tee -a "$LOG")
}
gpu_tests() {  # the one-GPU engine tests and the kernels' GPU tests, into $OUT/tests.log
  timeout 150 python -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$OUT/tests.log" 2>&1
  stamp "tests/test_gpu.py rc=$?: $(tail -1 "$OUT/tests.log")"
  timeout 100 python -m pytest -q -p no:cacheprovider tests/test_kernels.py -k "gpu or graph" >> "$OUT/tests.log" 2>&1
  stamp "kernel GPU tests rc=$?: $(tail -1 "$OUT/tests.log")"
}
loop_on() {  # tree, seconds, cases, out: this tree's loop_overhead.py (the public API only) run on another tree
  (cd "$1" && PYTHONPATH=$PWD timeout "$2" python "$OLDPWD/shifttune/profile/loop_overhead.py" --model llama-3.1-8b \
    --cases "$3" --no-offline --out "$4" 2>&1 | grep -v -i warn | grep -E "batch" | tee -a "$LOG")
}
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
if [ "${PART:-a}" = a ]; then
  timeout 100 python -m pytest -q -p no:cacheprovider tests/test_prefill_attention.py -k "cudnn or gpu" \
    > "$OUT/tests.log" 2>&1
  stamp "SDPA GPU tests rc=$?: $(tail -1 "$OUT/tests.log")"
  long_prompts . 170 8192,32768,65536,131071 "$OUT/long_prompts.json"
  stamp "128k - 1 alone, this tree:"
  long_prompts . 100 131071 "$OUT/long_prompts_128k.json"
  stamp "128k - 1 alone, before (gpu_old/s13a):"
  long_prompts gpu_old/s13a 100 131071 "$OUT/long_prompts_128k_before.json"
  timeout 90 python -m shifttune.profile.loop_overhead --model llama-3.1-8b --cases 7 --no-offline --timeline \
    --out "$OUT/loop_timeline.json" 2>&1 | grep -v -i warn | tail -3 | tee -a "$LOG"
elif [ "$PART" = b ]; then
  (timeout 240 python -m shifttune.profile.long_prompts --model llama-3.1-8b --paths sdpa --lengths \
    8192,32768,65536,131071 --no-layer-bench --breakdown --out "$OUT/long_prompts.json" 2>&1 | grep -v -i warn \
    | grep -E "tokens|floor|error|Error" | tail -6 | tee -a "$LOG")
  timeout 200 python -m shifttune.profile.loop_overhead --model llama-3.1-8b --out "$OUT/loop_overhead.json" 2>&1 \
    | grep -v -i warn | tee -a "$LOG"
elif [ "$PART" = c ]; then
  timeout 170 python -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$OUT/tests.log" 2>&1
  stamp "tests/test_gpu.py rc=$?: $(tail -1 "$OUT/tests.log")"
  timeout 150 python -m shifttune.profile.sampler_bench --out "$OUT/sampler_bench.json" 2>&1 | grep -v -i warn \
    | grep -E "tokens_match|config|wrote" | cut -c1-330 | tee -a "$LOG"
  timeout 210 python -m shifttune.profile.loop_overhead --model llama-3.1-8b --out "$OUT/loop_overhead.json" 2>&1 \
    | grep -v -i warn | tee -a "$LOG"
elif [ "$PART" = d ]; then
  python -m pip install -q --no-index --find-links wheels fastapi uvicorn prometheus_client httpx > /dev/null 2>&1
  timeout 100 python -m pytest -q -p no:cacheprovider tests/test_prefill_attention.py -k "cudnn or gpu" \
    > "$OUT/tests.log" 2>&1
  stamp "SDPA GPU tests rc=$?: $(tail -1 "$OUT/tests.log")"
  G=$(python -c "import torch; from shifttune.recommend.gpus import gpu_slug; print(gpu_slug(torch.cuda.get_device_name(0)))")
  python -m shifttune.cli profile --model llama-3.1-8b --predict --gpus 1x$G --out "$OUT/predicted_profile.json" \
    2>&1 | tail -1 | tee -a "$LOG"
  timeout 420 python -m shifttune.cli bench --compare tp --model llama-3.1-8b --device cuda --sp 1 --tp 1 \
    --profile "$OUT/predicted_profile.json" --rates 2,8 --num-prompts 40 --input-len 2048 --output-len 128 \
    --tokenizer tiny --server-arg="--load-format dummy" --out "$OUT/bench_compare_tp.json" > "$OUT/bench_tp.log" 2>&1
  stamp "bench --compare tp --profile rc=$?"; tail -22 "$OUT/bench_tp.log" | tee -a "$LOG"
elif [ "$PART" = e ]; then
  gpu_tests
  for tree in . gpu_old/s13b; do
    sfx=$([ $tree = . ] && echo "" || echo _before)
    stamp "tree $tree:"
    (cd $tree && PYTHONPATH=$PWD timeout 60 python -m shifttune.profile.attention_bench --decode --batches 1,2,4,8 \
      --contexts 2048,8192,32768 --out "$OUT/decode_attention$sfx.json" 2>&1 | grep -v -i warn | grep -E "^decode  b" \
      | tee -a "$LOG")
    loop_on $tree 150 0,1,3,5 "$OUT/loop_overhead$sfx.json"
  done
elif [ "$PART" = f ]; then
  gpu_tests
  for run in 1 2; do
    for tree in . gpu_old/s13b; do
      sfx=$([ $tree = . ] && echo "" || echo _before)_$run
      stamp "tree $tree, run $run:"
      loop_on $tree 150 0,1,3,5 "$OUT/loop_overhead$sfx.json"
    done
  done
elif [ "$PART" = g ]; then
  for v in on norope; do
    rm -rf /tmp/$v && mkdir /tmp/$v && cp -r shifttune /tmp/$v/
    sed -i 's/^FUSED_PDL = False/FUSED_PDL = True/' /tmp/$v/shifttune/kernels/fused.py
  done
  sed -i '/^        gdc_launch_dependents()$/d' /tmp/norope/shifttune/kernels/fused.py
  for run in 1 2; do
    for tree in /tmp/on /tmp/norope .; do
      stamp "tree $tree, run $run:"
      loop_on $tree 100 0,1 "$OUT/loop_$(basename $tree)_$run.json"
    done
  done
fi
stamp done
