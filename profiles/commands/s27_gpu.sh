#!/usr/bin/env bash
# Session 27's device checks, from the repository root (carry: wheels):
#   PART=tests bash profiles/commands/s27_gpu.sh   # tests/test_gpu.py and tests/test_kernels.py on the GPUs present, at
#     most TESTS_TIMEOUT s (default 480): the engine-side review mends of session 26 (workers born with SIGINT
#     blocked, the detokenizer's finalize) had only run on CPU
#   PART=serve bash profiles/commands/s27_gpu.sh   # shifttune serve + bench against the offline engine on GPU 0
#     (serve_vs_offline, llama-3.1-8b dummy weights, REPEATS runs a case, default 1, SCALE x the prompt counts, default
#     1): session 26's server and bench mends had only run on CPU
#   PART=servetrace TREES="before:plain mid:standard after:standard" bash profiles/commands/s27_gpu.sh
#     # serve_vs_offline --cases inf,256 --trace of each tree:loop in turn, ROUNDS times: a tree other than "after"
#     (this one) is gpu_old/s27_<tree> (carried; before = d25e724, mid = 65e3afe), loop "standard" with uvloop +
#     httptools installed, "plain" without
#   PART=standard bash profiles/commands/s27_gpu.sh   # serve_vs_offline --cases inf,256 --trace on this tree, with
#     uvicorn's plain loop and parser, then with uvloop + httptools installed (uvicorn[standard]), ROUNDS times each
#   PART=sweep bash profiles/commands/s27_gpu.sh   # issue 14: wide_split_probe over wider tiles at batch 1-2
# Into $OUT: check.log and each part's logs / JSON
. "$(dirname "$0")/gpu_setup.sh"
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tr '\n' ';')"
case "${PART:-tests}" in
tests)
  gpu_tests "${TESTS_TIMEOUT:-480}" ;;
serve)
  python -m pip install -q --no-index --find-links wheels fastapi uvicorn prometheus_client httpx > /dev/null 2>&1
  T0=$SECONDS
  CUDA_VISIBLE_DEVICES=0 timeout "${SERVE_TIMEOUT:-520}" python -m shifttune.bench.serve_vs_offline \
    --model llama-3.1-8b --device cuda --repeats "${REPEATS:-1}" --scale "${SCALE:-1}" \
    --out "$OUT/serve_vs_offline.json" > "$OUT/serve.log" 2>&1
  stamp "serve_vs_offline rc=$? in $((SECONDS - T0)) s"
  grep -v -i warn "$OUT/serve.log" | tail -20 | tee -a "$LOG" ;;
servetrace)
  python -m pip install -q --no-index --find-links wheels fastapi uvicorn prometheus_client httpx > /dev/null 2>&1
  for r in $(seq "${ROUNDS:-1}"); do
    for spec in ${TREES:-before:plain after:plain}; do  # tree:loop; a tree other than "after" is gpu_old/s27_<tree>
      tree=${spec%%:*}; kind=${spec##*:}
      if [ "$kind" = standard ]; then python -m pip install -q --no-index --find-links wheels uvloop httptools > /dev/null 2>&1
      else python -m pip uninstall -q -y uvloop httptools > /dev/null 2>&1; fi
      SP=""; [ "$tree" != after ] && SP="--server-path gpu_old/s27_$tree"
      T0=$SECONDS
      CUDA_VISIBLE_DEVICES=0 timeout "${SERVE_TIMEOUT:-280}" python -m shifttune.bench.serve_vs_offline \
        --model llama-3.1-8b --device cuda --cases "${CASES:-inf,256}" --trace $SP \
        --out "$OUT/svo_${tree}_${kind}_$r.json" > "$OUT/svo_${tree}_${kind}_$r.log" 2>&1
      stamp "serve_vs_offline $tree $kind round $r rc=$? in $((SECONDS - T0)) s"
      grep -E "^c=" "$OUT/svo_${tree}_${kind}_$r.log" | tee -a "$LOG"
      grep -m1 "serving the tree" "$OUT/svo_${tree}_${kind}_$r.serve.log" | tee -a "$LOG"
    done
  done
  (cd "$OUT" && tar czf "servetrace${TAG:-}.tgz" svo_* && rm -f svo_*)  # at most 8 files come back
  stamp "packed: $(ls -la "$OUT"/servetrace*.tgz)" ;;
standard)
  python -m pip install -q --no-index --find-links wheels fastapi uvicorn prometheus_client httpx > /dev/null 2>&1
  for r in $(seq "${ROUNDS:-1}"); do
    for kind in plain standard; do
      if [ $kind = standard ]; then python -m pip install -q --no-index --find-links wheels uvloop httptools > /dev/null 2>&1
      else python -m pip uninstall -q -y uvloop httptools > /dev/null 2>&1; fi
      T0=$SECONDS
      CUDA_VISIBLE_DEVICES=0 timeout "${SERVE_TIMEOUT:-280}" python -m shifttune.bench.serve_vs_offline \
        --model llama-3.1-8b --device cuda --cases "${CASES:-inf,256}" --trace \
        --out "$OUT/svo_${kind}_$r.json" > "$OUT/svo_${kind}_$r.log" 2>&1
      stamp "serve_vs_offline $kind round $r rc=$? in $((SECONDS - T0)) s ($(python -c 'import importlib.util as u; print([m for m in ("uvloop", "httptools") if u.find_spec(m)])'))"
      grep -E "^c=" "$OUT/svo_${kind}_$r.log" | tee -a "$LOG"
    done
  done
  (cd "$OUT" && tar czf standard.tgz svo_* && rm -f svo_*)
  stamp "packed: $(ls -la "$OUT"/standard.tgz)" ;;
sweep)
  T0=$SECONDS
  CUDA_VISIBLE_DEVICES=0 timeout "${SWEEP_TIMEOUT:-520}" python profiles/commands/wide_split_probe.py \
    --search 1x2048,2x2048 --tiles 64,128,256 --warps 4,8 --per-sm 1,2,4 --stages 1 --merges 32 --keep 4 \
    --contexts 2048,4096,8192 --out "$OUT/wide_tiles.json" > "$OUT/sweep.log" 2>&1
  stamp "wide_split_probe rc=$? in $((SECONDS - T0)) s"
  tail -30 "$OUT/sweep.log" | tee -a "$LOG" ;;
esac
