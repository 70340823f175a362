#!/usr/bin/env bash
# Session 14's one-GPU checks (each part < 10 min), from the repository root (carry: wheels, gpu_old/s14a =
# `git archive b2f09e3`, the tree before this session):
#   PART=a bash profiles/commands/s14_gpu.sh   # (run at a0ff366, where paged attention loaded its first K/V tile into
#       registers before waiting for RoPE) GPU tests; decode attention at batch 1-8 against the old kernel; the loop's
#       greedy cases on this tree, on gpu_old/s14a and on a copy of this tree without RoPE's early trigger
#   PART=b bash profiles/commands/s14_gpu.sh   # paged attention asks L2 for its first tiles before waiting: the same,
#       plus a copy of this tree without the L2 prefetch (PREFETCH_TILES = 0)
#   PART=b ...  (run at d09d3fd; attention_bench then failed on --old-kernel's outdated call, and 9 engine GPU tests
#       on the prefetch's arange for d = 32; PREFETCH_TILES is gone since, so at later commits "noprefetch" = this tree)
#   PART=c bash profiles/commands/s14_gpu.sh   # RoPE's early trigger only for steps whose attention splits, logits in
#       the model's dtype, paged attention as in gpu_old/s14a: GPU tests; the loop's greedy and sampled cases on this
#       tree and on gpu_old/s14a; the whole loop table with offline throughput on this tree
#   PART=d bash profiles/commands/s14_gpu.sh   # `_split_kernel` loads 16 bytes of logits per thread whatever their
#       dtype (8 for bf16 before): sampler_bench with the dummy logits in bf16 and in float32 and its sweep; the loop's
#       batch-256 sampled cases on this tree and on gpu_old/s14a
#   PART=e bash profiles/commands/s14_gpu.sh   # `_split_kernel` at 32 bytes a load: sampler_bench (no sweep; its token
#       checks); a five-step timeline of batch 256 at 512, sampled; the loop's batch-256 sampled cases twice
#   PART=f bash profiles/commands/s14_gpu.sh   # (not run in session 14: written after its device time ran out) GPU
#       tests; decode attention at batch 1-8 (attention_bench); decode_probe with its TMA variant against the engine
#       kernel; sampler_bench's token checks
# Into $OUT: check.log, tests.log, decode_attention.json (+ .log), loop_{here,before,notrigger}.json (a, b),
# loop_noprefetch.json (b); tests.log, loop_{here,before}.json, loop_overhead.json (c); sampler_bench.json,
# loop_b256_{here,before}.json (d); sampler_bench.json, loop_timeline.json, loop_b256_{1,2}.json (e); tests.log,
# decode_attention.json, decode_probe.json, sampler_bench.json (+ their .log) (f).
. "$(dirname "$0")/gpu_setup.sh"
gpu_tests() {  # the one-GPU engine tests and the kernels' GPU tests, into $OUT/tests.log
  timeout 150 python -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$OUT/tests.log" 2>&1
  stamp "tests/test_gpu.py rc=$?: $(tail -1 "$OUT/tests.log")"
  timeout 100 python -m pytest -q -p no:cacheprovider tests/test_kernels.py -k "gpu or graph" >> "$OUT/tests.log" 2>&1
  stamp "kernel GPU tests rc=$?: $(tail -1 "$OUT/tests.log")"
}
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
if [ "${PART:-a}" = a ] || [ "$PART" = b ]; then
  gpu_tests
  timeout 100 python -m shifttune.profile.attention_bench --decode --batches 1,2,4,8 --contexts 2048,8192 \
    --old-kernel gpu_old/s14a/shifttune/kernels/paged_attention.py --out "$OUT/decode_attention.json" \
    > "$OUT/decode_attention.log" 2>&1
  stamp "attention_bench rc=$?"; grep -E "^decode  b|Error|error" "$OUT/decode_attention.log" | tail -20 | tee -a "$LOG"
  variants="notrigger"
  rm -rf /tmp/notrigger && mkdir /tmp/notrigger && cp -r shifttune /tmp/notrigger/
  sed -i 's/^ROPE_EARLY_TRIGGER = True/ROPE_EARLY_TRIGGER = False/' /tmp/notrigger/shifttune/kernels/fused.py
  if [ "$PART" = b ]; then
    variants="notrigger noprefetch"
    rm -rf /tmp/noprefetch && mkdir /tmp/noprefetch && cp -r shifttune /tmp/noprefetch/
    sed -i 's/^PREFETCH_TILES = 2/PREFETCH_TILES = 0/' /tmp/noprefetch/shifttune/kernels/paged_attention.py
  fi
  for tree in . gpu_old/s14a $(for v in $variants; do echo /tmp/$v; done); do
    stamp "tree $tree:"
    loop_on $tree 100 0,1,3,5 "$OUT/loop_$([ $tree = . ] && echo here || basename $tree | sed s/s14a/before/).json"
  done
elif [ "$PART" = c ]; then
  gpu_tests
  for tree in . gpu_old/s14a; do
    stamp "tree $tree:"
    loop_on $tree 150 0,1,2,3,4,7 "$OUT/loop_$([ $tree = . ] && echo here || echo before).json"
  done
  stamp "the whole table with offline throughput, this tree:"
  loop_on . 240 all "$OUT/loop_overhead.json" " "
elif [ "$PART" = d ]; then
  timeout 240 python -m shifttune.profile.sampler_bench --out "$OUT/sampler_bench.json" > "$OUT/sampler_bench.log" 2>&1
  stamp "sampler_bench rc=$?"; grep -E "tokens_match|config|wrote|Error" "$OUT/sampler_bench.log" | cut -c1-400 \
    | tee -a "$LOG"
  for tree in . gpu_old/s14a; do
    stamp "tree $tree:"
    loop_on $tree 100 4,7 "$OUT/loop_b256_$([ $tree = . ] && echo here || echo before).json"
  done
elif [ "$PART" = e ]; then
  timeout 120 python -m shifttune.profile.sampler_bench --no-sweep --out "$OUT/sampler_bench.json" \
    > "$OUT/sampler_bench.log" 2>&1
  stamp "sampler_bench rc=$?"; grep -E "tokens_match|wrote|Error" "$OUT/sampler_bench.log" | cut -c1-400 | tee -a "$LOG"
  timeout 90 python -m shifttune.profile.loop_overhead --model llama-3.1-8b --cases 7 --no-offline --timeline \
    --out "$OUT/loop_timeline.json" 2>&1 | grep -v -i warn | tail -3 | tee -a "$LOG"
  for run in 1 2; do loop_on . 100 4,7 "$OUT/loop_b256_$run.json"; done
elif [ "$PART" = f ]; then
  gpu_tests
  timeout 100 python -m shifttune.profile.attention_bench --decode --batches 1,2,4,8 --contexts 2048,8192 \
    --out "$OUT/decode_attention.json" > "$OUT/decode_attention.log" 2>&1
  stamp "attention_bench rc=$?"; grep -E "^decode  b|Error" "$OUT/decode_attention.log" | tail -12 | tee -a "$LOG"
  timeout 200 python profiles/commands/decode_probe.py --batches 1,2,4,8 --contexts 2048,8192 \
    --out "$OUT/decode_probe.json" > "$OUT/decode_probe.log" 2>&1
  stamp "decode_probe rc=$?"; grep -E "^b=|Error" "$OUT/decode_probe.log" | tee -a "$LOG"
  timeout 120 python -m shifttune.profile.sampler_bench --no-sweep --out "$OUT/sampler_bench.json" \
    > "$OUT/sampler_bench.log" 2>&1
  stamp "sampler_bench rc=$?"; grep -E "tokens_match|Error" "$OUT/sampler_bench.log" | cut -c1-400 | tee -a "$LOG"
fi
stamp done
