#!/usr/bin/env bash
# Issue 13 on one host of several GPUs (nvidia-h200-x8, or x4 for what 4 GPUs can show), one device call per part
# (each < 10 min), from the repository root (carry: wheels):
#   GPUS=8 PART=tests TESTS_K="8 or 2-4 or 4-2" bash profiles/commands/multi_gpu.sh   # GPU tests (pytest -k picks)
#   GPUS=8 PART=profile bash profiles/commands/multi_gpu.sh     # collectives, every factorization, predicted, compare
#   GPUS=8 PART=serve MODES=tp RATES=1,8 bash profiles/commands/multi_gpu.sh    # recommend + bench --compare MODES
#   GPUS=8 PART=serve MODES=sp BURSTINESS=0.25 RATES=8 bash profiles/commands/multi_gpu.sh   # a bursty mix
#   GPUS=8 PART=tui bash profiles/commands/multi_gpu.sh         # serve's live view under load, screenshots (SVG)
#   GPUS=4 PART=burst TP=4 bash profiles/commands/multi_gpu.sh  # bursty 4k prompts, the engine's read-back rule off/on
#   GPUS=8 PART=allreduce bash profiles/commands/multi_gpu.sh   # TP decode: NCCL vs symmetric-memory all-reduce
# GPUS=4 runs the same on the first 4 GPUs (CUDA_VISIBLE_DEVICES). Model: llama-3.3-70b (MODEL= another), dummy bf16
# weights (the paper used FP8 weights: say so beside every comparison). Multi-GPU device time counts in full, start-up
# included. serve also takes NUM_PROMPTS (60) and BENCH_TIMEOUT (520 s); profile PROFILE_TIMEOUT (360 s); tests
# TESTS_TIMEOUT (480 s); burst and allreduce PROBE_TIMEOUT (540 s).
#   tests:   tests/test_gpu.py -k "$TESTS_K": the HF oracle in bf16 at every (TP, SP) whose heads divide, the mode
#            flipping mid-run, KV invariance across modes (~25 s a multi-GPU test until session 25, whose shutdown fix
#            took the driver's 10-s wait for its workers away: ~12 s at P = 2, s25_gpu c);
#   profile: `profile --collectives`, then `shifttune profile` over every feasible factorization of GPUS (a grid of
#            decode batches 1-32 at 2k and prefill steps up to 16k; each point with its floors), the bars
#            (floors.txt), the predicted profile of the same grid from the shipped op table and this call's
#            collectives, and `profile --compare` of the two;
#   serve:   `recommend` for 4k in / 250 out at RATES, then `bench --compare MODES` on the same workload (one mode per
#            call: a 70B server starts in minutes) with --profile (the committed measured profile of this part's
#            earlier run when $PROFILE names it, else a predicted one made here): predicted beside measured;
#   tui:     `python -m shifttune.tui.capture` on the GPUS with the shift policy under a bench load.
# Every part also logs the live views' NVML readings (nvml_$PART.jsonl: utilization, power, NVLink GB/s a second).
# Everything lands in $OUT/multi_gpu_${GPUS}_$PART.tgz (the device returns at most 8 files) plus multi_gpu.log.
set -u
OUT=${OUT:-/tmp/out}
PART=${PART:-tests}
GPUS=${GPUS:-8}
M=${MODEL:-llama-3.3-70b}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $((GPUS - 1)))}
W=/tmp/multi_gpu_$GPUS && mkdir -p $W
LOG=$OUT/multi_gpu.log
python -m pip install -q --no-index --find-links wheels pytest pytest-timeout hypothesis fastapi uvicorn textual plotext \
  > /dev/null 2>&1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
stamp() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
stamp "gpus ($CUDA_VISIBLE_DEVICES): $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  | sort | uniq -c)"
nvidia-smi topo -m > $W/topo.txt 2>&1
python profiles/commands/nvml_log.py --out $W/nvml_$PART.jsonl --seconds 590 > $W/nvml_$PART.err 2>&1 &  # the sampler's view
NVML_LOG=$! && trap "kill $NVML_LOG 2>/dev/null" EXIT
G=$(python -c "import torch; from shifttune.recommend.gpus import gpu_slug; print(gpu_slug(torch.cuda.get_device_name(0)))")
PROFILE=${PROFILE:-}
GRID="--tokens 1,8,32,128,256,1024,4096,8192,16384 --contexts 2048,8192"
predicted() {  # the predicted profile of the grid on GPUS of this type (CPU work)
  C=$W/collectives_${G}x$GPUS.json && [ -f $C ] && CT="--collective-table $C" || CT=""
  python -m shifttune.cli profile --model $M --predict --gpus ${GPUS}x$G $GRID $CT --out $1 > $W/predict.log 2>&1
  stamp "predict rc=$?: $(tail -1 $W/predict.log)"
}
case "$PART" in
tests)
  timeout ${TESTS_TIMEOUT:-480} python -m pytest -q -rA -p no:cacheprovider --timeout 150 tests/test_gpu.py -k "${TESTS_K:-not 8}" \
    > $W/gpu_tests.log 2>&1
  stamp "tests/test_gpu.py -k '${TESTS_K:-not 8}' rc=$?: $(tail -1 $W/gpu_tests.log)" ;;
profile)
  timeout 90 python -m shifttune.cli profile --collectives --gpus $GPUS --out $W/collectives_${G}x$GPUS.json \
    > $W/collectives.log 2>&1
  stamp "collectives rc=$?: $(tail -1 $W/collectives.log)"
  timeout ${PROFILE_TIMEOUT:-360} python -m shifttune.cli profile --model $M --gpus $GPUS --load-format dummy --no-tui --iters 5 \
    --warmup 2 $GRID --out $W/measured_${M}_${G}x$GPUS.json > $W/profile.log 2>&1
  stamp "profile rc=$?: $(tail -1 $W/profile.log)"
  python profiles/commands/profile_floors.py $W/measured_${M}_${G}x$GPUS.json > $W/floors.txt 2>&1
  stamp "floors (issue 13's bars): $(grep -c 'NOT met' $W/floors.txt) not met, $(grep -c ': met' $W/floors.txt) met"
  predicted $W/predicted_${M}_${G}x$GPUS.json
  python -m shifttune.cli profile --compare $W/measured_${M}_${G}x$GPUS.json $W/predicted_${M}_${G}x$GPUS.json \
    --out $W/compare_${M}_${G}x$GPUS.json > $W/compare.txt 2>&1
  stamp "compare rc=$?"; tail -n 4 $W/compare.txt | tee -a "$LOG" ;;
serve)
  [ -n "$PROFILE" ] && [ -f "$PROFILE" ] && P=$PROFILE || { P=$W/predicted_${M}_${G}x$GPUS.json; predicted $P; }
  timeout 60 python -m shifttune.cli recommend --profile $P --input-len 4096 --output-len 250 --rate ${RATES:-1,8} \
    --burstiness ${BURSTINESS:-1} --json > $W/recommend_4k_250.json 2> $W/recommend.log
  stamp "recommend on $P rc=$?: $(head -c 300 $W/recommend_4k_250.json)"
  read -r SP TP THR < <(python -c "import json; d = json.load(open('$W/recommend_4k_250.json'))
print(d['best_sp'], d['best_tp'], d.get('threshold') or 256)" 2>/dev/null || echo "$GPUS 1 256")
  timeout ${BENCH_TIMEOUT:-520} python -m shifttune.cli bench --compare ${MODES:-tp} --model $M --device cuda --sp $SP \
    --tp $TP --threshold $THR --rates ${RATES:-1,8} --burstiness ${BURSTINESS:-1} --num-prompts ${NUM_PROMPTS:-60} \
    --input-len 4096 \
    --output-len 250 --profile $P --tokenizer tiny --server-arg='--load-format dummy' \
    --out $W/bench_compare_${MODES:-tp}_b${BURSTINESS:-1}.json > $W/bench_${MODES:-tp}.log 2>&1
  stamp "bench --compare ${MODES:-tp} (SP=$SP x TP=$TP, threshold $THR) rc=$?: $(tail -3 $W/bench_${MODES:-tp}.log)" ;;
tui)
  timeout 540 python -m shifttune.tui.capture --model $M --device cuda --sp ${SP:-$GPUS} --tp ${TP:-1} \
    --repeats 1 --shots 3 --deadline 420 --out $W/tui > $W/tui.log 2>&1
  stamp "tui capture rc=$?: $(tail -2 $W/tui.log)" ;;
burst)
  [ -n "$PROFILE" ] && PA="--profile $PROFILE" || PA=""
  timeout ${PROBE_TIMEOUT:-540} python profiles/commands/burst_probe.py --model $M --tp ${TP:-$GPUS} --sp ${SP:-1} \
    --policy ${POLICY:-tp} --threshold ${THRESHOLD:-256} --repeats ${REPEATS:-1} $PA --out $W/burst_probe.json \
    > $W/burst.log 2>&1
  stamp "burst probe rc=$?: $(tail -4 $W/burst.log)" ;;
allreduce)
  timeout ${PROBE_TIMEOUT:-540} python profiles/commands/all_reduce_probe.py --model $M --tp $GPUS --out $W/all_reduce_probe.json \
    > $W/allreduce.log 2>&1
  stamp "all-reduce probe rc=$?: $(tail -9 $W/allreduce.log)" ;;
*) stamp "unknown PART=$PART (tests, profile, serve, tui, burst, allreduce)"; exit 2 ;;
esac
kill $NVML_LOG 2>/dev/null; wait $NVML_LOG 2>/dev/null  # tar wants the log finished
tar czf $OUT/multi_gpu_${GPUS}_$PART.tgz -C $W . && stamp done
