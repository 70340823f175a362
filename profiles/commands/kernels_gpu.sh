#!/usr/bin/env bash
# Issues 10 and 14 on one GPU, in one device call (~8.5 min at most; run from the repository root, or from a
# snapshot of a commit with `wheels/` and the old trees beside it):
#   bash profiles/commands/kernels_gpu.sh      (carry: wheels, gpu_old)
# Needs here first: gpu_old = `git archive 648755f` (the engine before session 7) and gpu_old/prev =
# `git archive 3d6a99a` (the sampler and decode attention before session 8's kernels).
# 1. the GPU tests of the kernels and the engine (sampler kernel vs reference, fused-merge determinism, HF
#    oracle in bf16 with cuDNN prefill, no host syncs, shutdown gives the memory back),
# 2. decode attention per layer against its HBM floor at batch 1-128, this kernel vs the old one, and a
#    one-at-a-time sweep of its launch options (`attention_bench --decode`),
# Everything lands in $OUT/kernels.tgz (the device returns at most 8 files) plus kernels.log.
set -u
OUT=${OUT:-/tmp/out}
W=/tmp/kernels && rm -rf $W && mkdir -p $W
LOG=$OUT/kernels.log
python -m pip install -q --no-index --find-links wheels pytest pytest-timeout hypothesis > /dev/null 2>&1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
stamp() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_gpu.py > $W/gpu_tests.log 2>&1
stamp "tests/test_gpu.py rc=$?: $(tail -1 $W/gpu_tests.log)"
timeout 90 python -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_sampling.py \
  -k "gpu or sample_kernel or kernel_sampler or top_p or search_span or noise" > $W/kernel_tests.log 2>&1
stamp "kernel tests rc=$?: $(tail -1 $W/kernel_tests.log)"
timeout 260 python -m shifttune.profile.attention_bench --decode --old-kernel gpu_old/shifttune/kernels/paged_attention.py \
  --out $W/decode_attention.json > $W/decode_attention.log 2>&1
stamp "decode attention rc=$?"; grep -v Warning $W/decode_attention.log | tail -30 | tee -a "$LOG"
tar czf $OUT/kernels.tgz -C $W .
stamp done
