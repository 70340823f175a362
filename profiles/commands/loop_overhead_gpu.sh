#!/usr/bin/env bash
# Issue 10's benchmarks on one GPU, in one device call (~9.5 min at most; run from the repository root):
#   bash profiles/commands/loop_overhead_gpu.sh   (carry: gpu_old; see kernels_gpu.sh for the trees)
# 0. the sampler alone at batch 1-256, this tree vs gpu_old/prev (`sampler_bench`),
# 1. loop_overhead on this tree (all cases, batch-1 decode against its floor with a kernel breakdown,
# offline throughput), 2. the same script file on the tree before this session's sampler and decode kernels
# (gpu_old/prev = `git archive 3d6a99a`; the "before" numbers from the same card in the same call).
# The GPU tests of the kernels and the loop are in kernels_gpu.sh.
set -u
OUT=${OUT:-/tmp/out}
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/card.txt"
timeout 110 python -m shifttune.profile.sampler_bench --out "$OUT/sampler_new.json" 2>&1 | grep -v Warning | tail -14
cp shifttune/profile/sampler_bench.py /tmp/sampler_bench.py
(cd gpu_old/prev && PYTHONPATH=$PWD timeout 60 python /tmp/sampler_bench.py --out "$OUT/sampler_prev.json" 2>&1 | tail -8)
timeout 230 python -m shifttune.profile.loop_overhead --model llama-3.1-8b --out "$OUT/loop_overhead_new.json" 2>&1 | grep -v Warning
cp shifttune/profile/loop_overhead.py /tmp/loop_overhead.py
(cd gpu_old/prev && PYTHONPATH=$PWD timeout 160 python /tmp/loop_overhead.py --model llama-3.1-8b --cases 0,1,2,3,4 \
  --out "$OUT/loop_overhead_prev.json" 2>&1 | grep -v Warning)
