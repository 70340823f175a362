#!/usr/bin/env bash
# The first one-GPU device call of the session after 12 (~5 min), from the repository root (carry: wheels):
#   bash profiles/commands/next_gpu.sh
# 1. decode attention at batch 1-8 with the sweep (its splits_2_per_sm row is the split rule before session
#    12's PROGRAMS_PER_SM = 1, which was measured on an H100 only: on an H200 this says whether to keep it);
# 2. decode_probe --sweep: the K/V loads alone and a cache with its blocks in order, beside the engine kernel
#    (where batch-1 2k decode attention spends its 8.7 us);
# 3. the sampler's per-kernel device time at batch 1-256 (issue 10's last miss: batch 256 at 512, sampled), and
#    its sweep, whose split_two_sweeps row times `_split_kernel`'s second-sweep copy-out (SPLIT_TWO_SWEEPS,
#    built in session 12, tested on CPU, not yet timed): if it is faster, make it the default;
# 4. the loop table and batch-1 floor share on this card.
# 0. first, the sampler's kernel tests compiled on the GPU (tests.log).
# Into $OUT: check.log, tests.log, decode_attention.json, decode_probe.json, sampler_bench.json,
# loop_overhead.json.
set -u
OUT=${OUT:-/tmp/out}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
LOG=$OUT/check.log
echo "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)" | tee "$LOG"
python -m pip install -q --no-index --find-links wheels pytest pytest-timeout hypothesis > /dev/null 2>&1
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_sampling.py -k "kernel or spill or greedy" \
  > "$OUT/tests.log" 2>&1  # the compiled sampler kernels, SPLIT_TWO_SWEEPS both ways, against the reference
echo "sampler kernel tests rc=$?: $(tail -1 "$OUT/tests.log")" | tee -a "$LOG"
timeout 150 python -m shifttune.profile.attention_bench --decode --batches 1,2,4,8 --contexts 2048,8192,32768 \
  --out "$OUT/decode_attention.json" 2>&1 | grep -v -i warn | tail -14 | tee -a "$LOG"
timeout 120 python profiles/commands/decode_probe.py --sweep --batches 1,2,4 --contexts 2048,8192 \
  --out "$OUT/decode_probe.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
timeout 150 python -m shifttune.profile.sampler_bench --out "$OUT/sampler_bench.json" 2>&1 \
  | grep -v -i warn | tail -20 | tee -a "$LOG"
timeout 170 python -m shifttune.profile.loop_overhead --model llama-3.1-8b --out "$OUT/loop_overhead.json" 2>&1 \
  | grep -v -i warn | tee -a "$LOG"
