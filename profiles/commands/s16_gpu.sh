#!/usr/bin/env bash
# Session 16's one-GPU checks (each part < 10 min), from the repository root (carry: wheels). Parts a-d timed the
# cluster decode kernel (shifttune/kernels/cluster_decode.{cu,py}), which lost to the Triton kernel everywhere and
# was removed after them: run them from the commits named in profiles/runs/s16_gpu/README.md.
#   PART=a bash profiles/commands/s16_gpu.sh   # the cluster decode kernel: its GPU tests; attention_bench --decode
#       (batch 1-8 x 2k/8k/32k: cluster kernel and Triton kernel on the same steps), at most 8 CTAs a cluster at
#       batch 1-2; decode attention's cost inside the engine's decode step with each kernel
#   PART=b bash profiles/commands/s16_gpu.sh   # the same after the block-table reads moved a tile ahead of the copies,
#       with a sweep of cluster size (8, 16) and tiles in flight (2-4) at batch 1-8
#   PART=c bash profiles/commands/s16_gpu.sh   # cluster tests; a sweep of cluster size : tiles in flight : warps a CTA
#       (8 warps: tiles of 128 keys) at batch 1-8; decode attention inside the engine's step with the defaults
#   PART=d bash profiles/commands/s16_gpu.sh   # read_floor_probe.py (what reading a batch 1-8 step's K/V bytes costs,
#       no attention); cluster size 16, 3 tiles in flight, 4 warps at batch 1-2
#   PART=e bash profiles/commands/s16_gpu.sh   # read_floor_probe.py with 1-16 programs per SM; attention_bench --decode
#       with its sweep of launch options at batch 1-2, 2k (the engine's Triton kernel)
#   PART=f bash profiles/commands/s16_gpu.sh   # the session's last tree: tests/test_gpu.py, the kernels' GPU tests, the
#       server tests on the GPU (tiny model)
# Into $OUT: check.log, tests.log, decode_attention.json (+ .log), decode_attention_c8.json, marginal_{cluster,triton}.json
. "$(dirname "$0")/gpu_setup.sh"
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
if [ "${PART:-a}" = a ]; then
  timeout 240 python -m pytest -q -x -p no:cacheprovider tests/test_kernels.py -k "cluster" > "$OUT/tests.log" 2>&1
  stamp "cluster kernel tests rc=$?: $(tail -1 "$OUT/tests.log")"
  grep -E "Error|error|assert" "$OUT/tests.log" | head -20 | cut -c1-300 | tee -a "$LOG"
  timeout 150 python -m shifttune.profile.attention_bench --decode --batches 1,2,4,8 --contexts 2048,8192,32768 \
    --no-sweep --out "$OUT/decode_attention.json" > "$OUT/decode_attention.log" 2>&1
  stamp "attention_bench rc=$?"; grep -E "decode|Error" "$OUT/decode_attention.log" | cut -c1-300 | tee -a "$LOG"
  timeout 60 python -c "
import sys
from shifttune.kernels import cluster_decode
from shifttune.profile import attention_bench
cluster_decode.MAX_CLUSTER = 8
attention_bench.main(sys.argv[1:])" --decode --batches 1,2 --contexts 2048,8192 --no-sweep \
    --out "$OUT/decode_attention_c8.json" 2>&1 | grep -E "decode|Error" | cut -c1-300 | tee -a "$LOG"
  for k in cluster triton; do
    timeout 150 python profiles/commands/decode_attention_marginal.py --out "$OUT/marginal_$k.json" \
      $([ $k = triton ] && echo --triton) 2>&1 | grep -E "attention|Error" | tee -a "$LOG"
  done
fi
if [ "$PART" = b ]; then
  timeout 240 python -m pytest -q -x -p no:cacheprovider tests/test_kernels.py -k "cluster" > "$OUT/tests.log" 2>&1
  stamp "cluster kernel tests rc=$?: $(tail -1 "$OUT/tests.log")"
  grep -E "Error|error|assert" "$OUT/tests.log" | head -20 | cut -c1-300 | tee -a "$LOG"
  for v in 8:4 16:4 8:3 8:2 16:2; do
    timeout 90 python -c "
import sys
from shifttune.kernels import cluster_decode
from shifttune.profile import attention_bench
cluster_decode.MAX_CLUSTER, cluster_decode.STAGES = map(int, sys.argv[1].split(':'))
attention_bench.main(sys.argv[2:])" $v --decode --batches 1,2,4,8 --contexts 2048,8192,32768 --no-sweep \
      --out "$OUT/decode_attention_${v/:/_}.json" 2>&1 | grep -E "decode  n|Error" | cut -c1-300 | sed "s/^/$v /" | tee -a "$LOG"
  done
  for k in cluster triton; do
    timeout 150 python profiles/commands/decode_attention_marginal.py --out "$OUT/marginal_$k.json" \
      $([ $k = triton ] && echo --triton) 2>&1 | grep -E "attention|Error" | tee -a "$LOG"
  done
fi
if [ "$PART" = c ]; then
  timeout 240 python -m pytest -q -x -p no:cacheprovider tests/test_kernels.py -k "cluster" > "$OUT/tests.log" 2>&1
  stamp "cluster kernel tests rc=$?: $(tail -1 "$OUT/tests.log")"
  grep -E "Error|error|assert" "$OUT/tests.log" | head -20 | cut -c1-300 | tee -a "$LOG"
  for v in ${VARIANTS:-16:2:4 16:2:8 8:2:8 8:3:8 16:3:8}; do
    timeout 90 python -c "
import sys
from shifttune.kernels import cluster_decode
from shifttune.profile import attention_bench
cluster_decode.MAX_CLUSTER, cluster_decode.STAGES, cluster_decode.WARPS = map(int, sys.argv[1].split(':'))
attention_bench.main(sys.argv[2:])" $v --decode --batches 1,2,4,8 --contexts 2048,8192,32768 --no-sweep \
      --out "$OUT/decode_attention_${v//:/_}.json" 2>&1 | grep -E "decode  n|Error" | cut -c1-300 | sed "s/^/$v /" | tee -a "$LOG"
  done
  timeout 150 python profiles/commands/decode_attention_marginal.py --out "$OUT/marginal_cluster.json" 2>&1 \
    | grep -E "attention|Error" | tee -a "$LOG"
fi
if [ "$PART" = d ]; then
  timeout 120 python profiles/commands/read_floor_probe.py --out "$OUT/read_floor.json" 2>&1 | tee -a "$LOG"
  VARIANTS="16:3:4 8:4:4" PART=c_sweep
  for v in $VARIANTS; do
    timeout 90 python -c "
import sys
from shifttune.kernels import cluster_decode
from shifttune.profile import attention_bench
cluster_decode.MAX_CLUSTER, cluster_decode.STAGES, cluster_decode.WARPS = map(int, sys.argv[1].split(':'))
attention_bench.main(sys.argv[2:])" $v --decode --batches 1,2 --contexts 2048,8192,32768 --no-sweep \
      --out "$OUT/decode_attention_${v//:/_}.json" 2>&1 | grep -E "decode  n|Error" | cut -c1-300 | sed "s/^/$v /" | tee -a "$LOG"
  done
fi
if [ "$PART" = e ]; then
  timeout 200 python profiles/commands/read_floor_probe.py --out "$OUT/read_floor.json" 2>&1 | tee -a "$LOG"
  timeout 200 python -m shifttune.profile.attention_bench --decode --batches 1,2 --contexts 2048 \
    --out "$OUT/decode_attention.json" 2>&1 | grep -E "decode|combined|Error" | cut -c1-300 | tee -a "$LOG"
fi
if [ "$PART" = f ]; then
  timeout 200 python -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$OUT/tests.log" 2>&1
  stamp "tests/test_gpu.py rc=$?: $(tail -1 "$OUT/tests.log")"
  timeout 120 python -m pytest -q -p no:cacheprovider tests/test_kernels.py -k "gpu or graph" >> "$OUT/tests.log" 2>&1
  stamp "kernel GPU tests rc=$?: $(tail -1 "$OUT/tests.log")"
  grep -E "FAILED|Error" "$OUT/tests.log" | head -10 | cut -c1-300 | tee -a "$LOG"
fi
