#!/usr/bin/env bash
# Session 31's device checks, from the repository root (carry: wheels gpu_old/s28_before31):
#   PART=burst bash profiles/commands/s31_gpu.sh   # client_burst_probe.py on this host: the bench's client of each tree
#     of TREES (default "before31 after"; before31: gpu_old/s28_before31, f4b91c5's shifttune/, the client on httpx;
#     after: this tree, on aiohttp) and a bare asyncio client, 512 requests of 1024 token ids, CHUNKS (default 1) a reply
#   PART=client bash profiles/commands/s31_gpu.sh  # serve_vs_offline --cases inf --trace (llama-3.1-8b dummy) run from
#     each tree of TREES, ROUNDS times in turn (default 2), every run serving this tree (--server-path): only the
#     bench's client and the offline engine come from the tree named
#   PART=tests bash profiles/commands/s31_gpu.sh   # tests/test_gpu.py tests/test_kernels.py, at most TESTS_TIMEOUT s
# PART may list several parts ("burst client tests"). Into $OUT: check.log and each part's logs / JSON
. "$(dirname "$0")/gpu_setup.sh"
python -m pip install -q --no-index --find-links wheels fastapi uvicorn prometheus_client httpx aiohttp > /dev/null 2>&1
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tr '\n' ';')"
stamp "python $(python -c 'import sys, aiohttp, httpx; print(sys.version.split()[0], "aiohttp", aiohttp.__version__, "httpx", httpx.__version__)') nproc $(nproc)"
for part in ${PART:-burst}; do
case "$part" in
burst)
  for tree in ${TREES:-before31 after} raw; do
    client=bench; [ "$tree" = raw ] && { client=raw; tree=after; }
    name=burst_${client}_${tree}; T0=$SECONDS
    in_tree "$tree" 200 python "$PWD/profiles/commands/client_burst_probe.py" --requests 512 --input-len 1024 \
      --rounds 3 --chunks "${CHUNKS:-1}" --client "$client" --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
    stamp "client_burst_probe $client $tree rc=$? in $((SECONDS - T0)) s"
    grep "^round" "$OUT/$name.log" | tee -a "$LOG"
  done
  (cd "$OUT" && tar czf burst.tgz burst_* && rm -f burst_*) ;;
client)
  for r in $(seq "${ROUNDS:-2}"); do
    for tree in ${TREES:-before31 after}; do
      T0=$SECONDS
      CUDA_VISIBLE_DEVICES=0 in_tree "$tree" "${SERVE_TIMEOUT:-200}" python -m shifttune.bench.serve_vs_offline \
        --model llama-3.1-8b --device cuda --cases inf --trace --server-path "$PWD" \
        --out "$OUT/svo_${tree}_$r.json" > "$OUT/svo_${tree}_$r.log" 2>&1
      stamp "serve_vs_offline $tree round $r rc=$? in $((SECONDS - T0)) s"
      grep -E "^c=" "$OUT/svo_${tree}_$r.log" | tee -a "$LOG"
    done
  done
  (cd "$OUT" && tar czf client.tgz svo_* && rm -f svo_*) ;;
tests)
  gpu_tests "${TESTS_TIMEOUT:-500}" ;;
*)
  stamp "unknown part $part" ;;
esac
done
