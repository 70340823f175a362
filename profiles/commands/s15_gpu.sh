#!/usr/bin/env bash
# Session 15's one-GPU checks (each part < 10 min), from the repository root (carry: wheels, gpu_old/s15a =
# `git archive 9ef12cb`, the tree before this session):
#   PART=a bash profiles/commands/s15_gpu.sh   # the sampler's passes 2-4 and draw in one program per row (no spill
#       kernels): sampling kernel tests compiled for the GPU; sampler_bench (no sweep) on this tree and on
#       gpu_old/s15a; the loop's batch-256 sampled cases on both
#   PART=c bash profiles/commands/s15_gpu.sh   # _finish_kernel with per-position masses and the next block's loads
#       first: sampling kernel tests on the GPU; sampler_bench with its sweep on this tree, without on gpu_old/s15a
#   PART=d bash profiles/commands/s15_gpu.sh   # the whole loop table again, with offline throughput, on this tree;
#       offline and the batch-256 sampled cases on gpu_old/s15a
#       (run at 9b96243: the old tree's offline run failed, its LLM made for 1024-token contexts; see part e)
#   PART=e bash profiles/commands/s15_gpu.sh   # offline throughput and cases 4, 5, 7 on this tree and gpu_old/s15a
#   PART=f bash profiles/commands/s15_gpu.sh   # sampler_bench with its sweep of FINISH_BLOCK / warps (the mass
#       accumulators' registers)
#   PART=b bash profiles/commands/s15_gpu.sh   # GPU tests (with the sampling kernels'); sampler_bench (no sweep); the whole loop table with
#       offline throughput on this tree; the batch-256 sampled cases on gpu_old/s15a
# Into $OUT: check.log, tests.log, sampler_{here,before}.json (+ .log), loop_b256_{here,before}.json (a);
# tests.log, sampler_bench.json (+ .log), loop_overhead.json, loop_b256_before.json (b); tests.log, sampler_sweep.json, sampler_before.json
# (+ their .log) (c); loop_overhead.json, loop_before.json (d); loop_{here,before}.json (e).
. "$(dirname "$0")/gpu_setup.sh"
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
if [ "${PART:-a}" = a ]; then
  timeout 200 python -m pytest -q -p no:cacheprovider tests/test_sampling.py -k "kernel or sampler" > "$OUT/tests.log" 2>&1
  stamp "sampling kernel tests on the GPU rc=$?: $(tail -1 "$OUT/tests.log")"
  for tree in . gpu_old/s15a; do
    name=$([ $tree = . ] && echo here || echo before)
    (cd $tree && PYTHONPATH=$PWD timeout 120 python -m shifttune.profile.sampler_bench --no-sweep \
      --out "$OUT/sampler_$name.json" > "$OUT/sampler_$name.log" 2>&1)
    stamp "sampler_bench $name rc=$?"; grep -E "tokens_match|Error" "$OUT/sampler_$name.log" | cut -c1-400 | tee -a "$LOG"
  done
  for tree in . gpu_old/s15a; do
    stamp "tree $tree:"
    loop_on $tree 120 4,7 "$OUT/loop_b256_$([ $tree = . ] && echo here || echo before).json"
  done
elif [ "$PART" = c ]; then
  timeout 200 python -m pytest -q -p no:cacheprovider tests/test_sampling.py -k "kernel or sampler" > "$OUT/tests.log" 2>&1
  stamp "sampling kernel tests on the GPU rc=$?: $(tail -1 "$OUT/tests.log")"
  timeout 330 python -m shifttune.profile.sampler_bench --out "$OUT/sampler_sweep.json" > "$OUT/sampler_sweep.log" 2>&1
  stamp "sampler_bench rc=$?"; grep -E "tokens_match|config|Error" "$OUT/sampler_sweep.log" | cut -c1-600 | tee -a "$LOG"
  (cd gpu_old/s15a && PYTHONPATH=$PWD timeout 120 python -m shifttune.profile.sampler_bench --no-sweep \
    --out "$OUT/sampler_before.json" > "$OUT/sampler_before.log" 2>&1)
  stamp "sampler_bench before rc=$?"
elif [ "$PART" = d ]; then
  loop_on . 240 all "$OUT/loop_overhead.json" " "
  stamp "tree gpu_old/s15a, offline and batch 256 sampled:"
  loop_on gpu_old/s15a 200 4,7 "$OUT/loop_before.json" " "
elif [ "$PART" = e ]; then  # cases 4,5,7: case 5 (8k) gives the LLM room for offline's 1024 + 128 tokens
  for tree in . gpu_old/s15a; do
    stamp "tree $tree, offline and cases 4, 5, 7:"
    loop_on $tree 200 4,5,7 "$OUT/loop_$([ $tree = . ] && echo here || echo before).json" " "
  done
elif [ "$PART" = f ]; then
  timeout 330 python -m shifttune.profile.sampler_bench --out "$OUT/sampler_sweep.json" > "$OUT/sampler_sweep.log" 2>&1
  stamp "sampler_bench rc=$?"; grep -E "tokens_match|config|Error" "$OUT/sampler_sweep.log" | cut -c1-700 | tee -a "$LOG"
elif [ "$PART" = b ]; then
  timeout 150 python -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$OUT/tests.log" 2>&1
  stamp "tests/test_gpu.py rc=$?: $(tail -1 "$OUT/tests.log")"
  timeout 100 python -m pytest -q -p no:cacheprovider tests/test_kernels.py -k "gpu or graph" >> "$OUT/tests.log" 2>&1
  stamp "kernel GPU tests rc=$?: $(tail -1 "$OUT/tests.log")"
  timeout 150 python -m pytest -q -p no:cacheprovider tests/test_sampling.py -k "kernel or sampler" >> "$OUT/tests.log" 2>&1
  stamp "sampling kernel tests on the GPU rc=$?: $(tail -1 "$OUT/tests.log")"
  timeout 100 python -m shifttune.profile.sampler_bench --no-sweep --out "$OUT/sampler_bench.json" \
    > "$OUT/sampler_bench.log" 2>&1
  stamp "sampler_bench rc=$?"; grep -E "tokens_match|Error" "$OUT/sampler_bench.log" | cut -c1-400 | tee -a "$LOG"
  stamp "the whole table with offline throughput, this tree:"
  loop_on . 240 all "$OUT/loop_overhead.json" " "
  stamp "tree gpu_old/s15a:"
  loop_on gpu_old/s15a 100 4,7 "$OUT/loop_b256_before.json"
fi
stamp done
