#!/usr/bin/env bash
# Issue 10's benchmark on one GPU, in one device call (run from the repository root):
#   bash profiles/commands/loop_overhead_gpu.sh   (carry: wheels, gpu_old = `git archive <old commit>`)
# 1. the GPU tests of the sampler kernel and the engine loop, 2. loop_overhead on this tree (all cases,
# batch-1 floor, offline throughput), 3. the same script file on the old tree (the "before" numbers).
set -u
OUT=${OUT:-/tmp/out}
python -m pip install -q --no-index --find-links wheels pytest pytest-timeout hypothesis > /dev/null 2>&1
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/card.txt"
timeout 200 python -m pytest -q -m gpu tests/test_kernels.py tests/test_gpu.py -k "sample or sync or shared or oracle" \
  > "$OUT/gpu_tests.log" 2>&1; echo "gpu tests rc=$?" >> "$OUT/gpu_tests.log"
tail -3 "$OUT/gpu_tests.log"
timeout 230 python -m shifttune.profile.loop_overhead --model llama-3.1-8b --out "$OUT/loop_overhead_new.json" 2>&1 | grep -v Warning
cp shifttune/profile/loop_overhead.py /tmp/loop_overhead.py
(cd gpu_old && PYTHONPATH=$PWD timeout 170 python /tmp/loop_overhead.py --model llama-3.1-8b --cases 0,1,2,3,4 \
  --out "$OUT/loop_overhead_old.json" 2>&1 | grep -v Warning)
