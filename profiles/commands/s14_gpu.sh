#!/usr/bin/env bash
# Session 14's one-GPU checks (each part < 10 min), from the repository root (carry: wheels, gpu_old/s14a =
# `git archive b2f09e3`, the tree before this session):
#   PART=a bash profiles/commands/s14_gpu.sh   # paged attention loads its first K/V tile before waiting for RoPE,
#       the merge lets the next launch start, RoPE triggers attention early, logits in the model's dtype: GPU tests;
#       decode attention at batch 1-8 against the old kernel in one process; the loop's greedy cases on this tree,
#       on gpu_old/s14a and on a copy of this tree without RoPE's early trigger
#   PART=b bash profiles/commands/s14_gpu.sh   # the loop's sampled cases on this tree and on gpu_old/s14a, twice
#       (alternating), and the whole loop table with offline throughput on this tree
# Into $OUT: check.log, tests.log, decode_attention.json, loop_{here,before,notrigger}.json (a);
# loop_sampled_{here,before}_{1,2}.json, loop_overhead.json (b).
. "$(dirname "$0")/gpu_setup.sh"
gpu_tests() {  # the one-GPU engine tests and the kernels' GPU tests, into $OUT/tests.log
  timeout 150 python -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$OUT/tests.log" 2>&1
  stamp "tests/test_gpu.py rc=$?: $(tail -1 "$OUT/tests.log")"
  timeout 100 python -m pytest -q -p no:cacheprovider tests/test_kernels.py -k "gpu or graph" >> "$OUT/tests.log" 2>&1
  stamp "kernel GPU tests rc=$?: $(tail -1 "$OUT/tests.log")"
}
loop_on() {  # tree, seconds, cases, out, [more flags]: this tree's loop_overhead.py (the public API only) on a tree
  (cd "$1" && PYTHONPATH=$PWD timeout "$2" python "$OLDPWD/shifttune/profile/loop_overhead.py" --model llama-3.1-8b \
    --cases "$3" --out "$4" ${5:---no-offline} 2>&1 | grep -v -i warn | grep -E "batch|offline" | tee -a "$LOG")
}
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
if [ "${PART:-a}" = a ]; then
  gpu_tests
  timeout 100 python -m shifttune.profile.attention_bench --decode --batches 1,2,4,8 --contexts 2048,8192 \
    --old-kernel gpu_old/s14a/shifttune/kernels/paged_attention.py --out "$OUT/decode_attention.json" 2>&1 \
    | grep -v -i warn | grep -E "^decode  b" | tee -a "$LOG"
  rm -rf /tmp/notrigger && mkdir /tmp/notrigger && cp -r shifttune /tmp/notrigger/
  sed -i 's/^ROPE_EARLY_TRIGGER = True/ROPE_EARLY_TRIGGER = False/' /tmp/notrigger/shifttune/kernels/fused.py
  for tree in . gpu_old/s14a /tmp/notrigger; do
    stamp "tree $tree:"
    loop_on $tree 100 0,1,3,5 "$OUT/loop_$([ $tree = . ] && echo here || basename $tree | sed s/s14a/before/).json"
  done
elif [ "$PART" = b ]; then
  for run in 1 2; do
    for tree in . gpu_old/s14a; do
      stamp "tree $tree, run $run:"
      loop_on $tree 100 2,4,7 "$OUT/loop_sampled_$([ $tree = . ] && echo here || echo before)_$run.json"
    done
  done
  stamp "the whole table with offline throughput, this tree:"
  loop_on . 240 all "$OUT/loop_overhead.json" " "
fi
stamp done
