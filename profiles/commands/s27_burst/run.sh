#!/usr/bin/env bash
# Session 27's CPU burst probe (no GPU): the HTTP process of `shifttune serve` (tiny model's tokenizer) over a stand-in
# engine core (fakecore.py: every running request gets a token every 15 ms, up to 256 running), hit by RUNS bursts of
# 512 streamed requests (1024-token prompts, 64 tokens out) from a bare httpx client (burst.py), per server variant:
#   h11        uvicorn's h11 parser and asyncio loop (the shipped default)
#   h11-freeze the same with the HTTP process's heap frozen after start-up (gc.freeze, as 65e3afe-2501677 did)
#   httptools  uvicorn's httptools parser (uvicorn[standard]; needs httptools installed)
# Each line: the client's failed requests by error, the burst's duration, when the response headers came back, and the
# CPU time the server's HTTP process spent on the burst (OUTPUT_TOKENS tokens a request, default 64).
#   bash profiles/commands/s27_burst/run.sh > profiles/runs/s27_burst_cpu.txt
# TRACE=1 adds burst.py's trace line to each run's line (session 29).
set -u
cd "$(dirname "$0")"
RUNS=${RUNS:-4}
for variant in ${VARIANTS-h11 h11-freeze httptools}; do
  port=$((18700 + RANDOM % 200))
  case $variant in
    h11) env=""; args="h11 asyncio" ;;
    h11-freeze) env="FREEZE=1"; args="h11 asyncio" ;;
    httptools) env=""; args="httptools asyncio" ;;
    *) continue ;;
  esac
  env $env python front.py $port $args > /tmp/s27_burst_front.log 2>&1 &
  sleep 12
  pid=$(pgrep -f "front.py $port" | head -1)
  for r in $(seq "$RUNS"); do
    cpu0=$(awk '{print $14 + $15}' /proc/$pid/stat)
    line=$(python burst.py $port 512 ${OUTPUT_TOKENS:-64} 2>&1 | grep -E "^(errors|trace)" | tr "\n" " ")
    cpu1=$(awk '{print $14 + $15}' /proc/$pid/stat)
    echo "$variant run $r: $line; HTTP process CPU $(( cpu1 - cpu0 )) ticks of 10 ms"
  done
  kill -INT %1; wait
done
# Then the bench's own client, after a streamed test request or after a GET (after_test.py), against h11 (VARIANTS=""
# runs only this part; AFTER_TEST="" skips it):
if [ -n "${AFTER_TEST-1}" ]; then
  port=$((18900 + RANDOM % 90))
  python front.py $port h11 asyncio > /tmp/s27_burst_front.log 2>&1 &
  sleep 12
  for r in $(seq "$RUNS"); do
    for before in test health; do python after_test.py $port 512 64 $before 2>&1 | grep "^after"; done
  done
  kill -INT %1; wait
fi
