#!/usr/bin/env bash
# Issue 13, what 4 GPUs of one host can show (device kind nvidia-h200-x4; nvidia-h100-x4 runs it too), in two
# device calls of at most ~9 min each (run from the repository root; carry wheels):
#   PART=tests bash profiles/commands/multi_gpu_4_gpu.sh      (1 and 2 below)
#   PART=profile bash profiles/commands/multi_gpu_4_gpu.sh    (3 and 4; reuses 2's table when /tmp kept it)
# 1. the GPU tests at P = 2 and 4 (tests/test_gpu.py): the HF oracle in bf16 at (TP, SP) = (2,1), (1,2), (2,2),
#    (4,1), (1,4) with the mode flipping mid-run, and KV invariance across modes,
# 2. the collectives on these GPUs (`profile --collectives --gpus 4`),
# 3. `shifttune profile --model llama-3.3-70b --gpus 4` (every feasible factorization of 4) on a reduced grid,
# 4. the predicted profile of the same grid for 4 of these GPUs (shipped op table, the collectives of step 2)
#    and `profile --compare` of the two.
# The whole test file takes ~20 min on 4 GPUs (~25 s per multi-GPU test): TESTS_K picks a part (pytest -k), e.g.
# TESTS_K="1-4 or invariance or sync or graph or shutdown or compile" after session 10's run (profiles/runs/
# multi_gpu_4_h200_s10: the first 15 passed). Multi-GPU device time counts in full, start-up included.
# Everything lands in $OUT/multi_gpu_4_$PART.tgz (the device returns at most 8 files) plus multi_gpu_4.log.
#   PART=serve MODES=tp bash profiles/commands/multi_gpu_4_gpu.sh   (5; one mode per call: a 70B server starts in
#   minutes; then MODES=sp, MODES=shift) -- written in session 10, not yet run:
# 5. `shifttune recommend` for 4k in / 250 out at 1 req/s and at 8 req/s (the measured 4-GPU profile when step 3
#    left one in /tmp, else predicted), then `shifttune bench --compare $MODES` on the same workload at the same
#    rates (SP x TP = 4 x 1, the recommended threshold), llama-3.3-70b dummy bf16 (the paper used FP8 weights).
# Not yet here: the bursty mix, the TUI screenshot.
set -u
OUT=${OUT:-/tmp/out}
PART=${PART:-tests}
W=/tmp/multi_gpu_4 && mkdir -p $W
LOG=$OUT/multi_gpu_4.log
python -m pip install -q --no-index --find-links wheels pytest pytest-timeout hypothesis > /dev/null 2>&1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
stamp() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
stamp "gpus: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sort | uniq -c)"
nvidia-smi topo -m > $W/topo.txt 2>&1
G=$(python -c "import torch; from shifttune.recommend.gpus import gpu_slug; print(gpu_slug(torch.cuda.get_device_name(0)))")
if [ "$PART" = tests ]; then
  timeout 420 python -m pytest -q -rA -p no:cacheprovider --timeout 120 tests/test_gpu.py -k "${TESTS_K:-not 8}" \
    > $W/gpu_tests.log 2>&1
  stamp "tests/test_gpu.py rc=$?: $(tail -1 $W/gpu_tests.log)"
  timeout 60 python -m shifttune.cli profile --collectives --gpus 4 --out $W/collectives_${G}x4.json > $W/collectives.log 2>&1
  stamp "collectives rc=$?: $(tail -1 $W/collectives.log)"
  tar czf $OUT/multi_gpu_4_tests.tgz -C $W . && stamp done && exit 0
fi
M=llama-3.3-70b
if [ "$PART" = serve ]; then
  P=$W/measured_${M}_${G}x4.json && [ -f $P ] && PROF="--profile $P" || PROF="--model $M --gpus 4x$G"
  timeout 60 python -m shifttune.cli recommend $PROF --input-len 4096 --output-len 250 --rate 1,8 --json \
    > $W/recommend_4k_250.json 2> $W/recommend.log
  stamp "recommend rc=$?: $(head -c 300 $W/recommend_4k_250.json)"
  THR=$(python -c "import json; print(json.load(open('$W/recommend_4k_250.json')).get('threshold') or 256)" 2>/dev/null || echo 256)
  timeout 500 python -m shifttune.cli bench --compare ${MODES:-tp} --model $M --device cuda --sp 4 --tp 1 --threshold $THR \
    --rates 1,8 --num-prompts 60 --input-len 4096 --output-len 250 --server-arg='--load-format dummy' \
    --out $W/bench_compare_${MODES:-tp}.json > $W/bench_${MODES:-tp}.log 2>&1
  stamp "bench --compare ${MODES:-tp} rc=$?: $(tail -3 $W/bench_${MODES:-tp}.log)"
  tar czf $OUT/multi_gpu_4_serve.tgz -C $W . && stamp done && exit 0
fi
C=$W/collectives_${G}x4.json && [ -f $C ] || C=shifttune/data/collectives/${G}x4.json  # else the shipped table
CT=""; [ -f $C ] && CT="--collective-table $C"
GRID="--tokens 1,8,32,128,256,1024,4096,8192 --contexts 2048,8192"
timeout 420 python -m shifttune.cli profile --model $M --gpus 4 --load-format dummy --no-tui --iters 5 --warmup 2 $GRID \
  --out $W/measured_${M}_${G}x4.json > $W/profile.log 2>&1
stamp "profile rc=$?: $(tail -1 $W/profile.log)"
python -m shifttune.cli profile --model $M --predict --gpus 4x$G $GRID $CT \
  --out $W/predicted_${M}_${G}x4.json > $W/predict.log 2>&1
stamp "predict rc=$?: $(tail -1 $W/predict.log)"
python -m shifttune.cli profile --compare $W/measured_${M}_${G}x4.json $W/predicted_${M}_${G}x4.json \
  --out $W/compare_${M}_${G}x4.json > $W/compare.txt 2>&1
stamp "compare rc=$?"; tail -n 4 $W/compare.txt | tee -a "$LOG"
tar czf $OUT/multi_gpu_4_profile.tgz -C $W .
stamp done
