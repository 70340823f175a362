#!/usr/bin/env bash
# Session 16's one-GPU checks (each part < 10 min), from the repository root (carry: wheels). Parts a-d timed the
# cluster decode kernel (shifttune/kernels/cluster_decode.{cu,py}), which lost to the Triton kernel everywhere and
# was removed after them; they live in this file at the commits named in profiles/runs/s16_gpu/README.md (last:
# dcd6907), and run from there. This tree keeps the parts that run on it:
#   PART=e bash profiles/commands/s16_gpu.sh   # read_floor_probe.py with 1-16 programs per SM; attention_bench --decode
#       with its sweep of launch options at batch 1-2, 2k (the engine's Triton kernel)
#   PART=f bash profiles/commands/s16_gpu.sh   # the session's last tree: tests/test_gpu.py and the kernels' GPU tests
# Into $OUT: check.log, read_floor.json and decode_attention.json (e), tests.log (f)
. "$(dirname "$0")/gpu_setup.sh"
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
if [ "${PART:-e}" = e ]; then
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
