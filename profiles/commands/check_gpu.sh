#!/usr/bin/env bash
# One device call (~8 min) after engine changes: the GPU tests and the decode-attention sweep
# (kernels_gpu.sh), the sampler alone (sampler_bench: flat, peaked and dummy-weight logits), then issue 10's
# loop benchmark on this tree with the busy/idle timeline of five decode
# steps for the cases whose loop exceeds the graph most, then the timed run (all cases, batch-1 breakdown,
# offline throughput). From the repository root (carry: wheels, gpu_old):
#   bash profiles/commands/check_gpu.sh
# Into $OUT: kernels.tgz, kernels.log, sampler_bench.json, loop_overhead_timeline.json, loop_overhead.json, check.log.
set -u
OUT=${OUT:-/tmp/out}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
bash profiles/commands/kernels_gpu.sh > /dev/null 2>&1
tail -25 "$OUT/kernels.log"
timeout 110 python -m shifttune.profile.sampler_bench --out "$OUT/sampler_bench.json" 2>&1 | grep -v Warning | tail -16 \
  | tee "$OUT/check.log"
timeout 120 python -m shifttune.profile.loop_overhead --model llama-3.1-8b --cases 2,3,6 --no-offline --timeline \
  --out "$OUT/loop_overhead_timeline.json" 2>&1 | grep -v Warning | tee -a "$OUT/check.log"
timeout 200 python -m shifttune.profile.loop_overhead --model llama-3.1-8b --out "$OUT/loop_overhead.json" 2>&1 \
  | grep -v Warning | tee -a "$OUT/check.log"
