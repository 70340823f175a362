#!/usr/bin/env bash
# Session 25's device checks, from the repository root (carry: wheels, which holds py-spy as well):
#   PART=a bash profiles/commands/s25_gpu.sh   # on 2 GPUs: a shutdown probe (below); the SP-graph test (sp_cuda_graph_tokens_per_gpu) alone,
#     with py-spy stacks of every python process if it still runs after WATCH s (default 300); then, in the time
#     left (BUDGET s in all), tests/test_gpu.py's cases selected by P2_K (default: every case that runs on 2 GPUs)
#   PART=d bash profiles/commands/s25_gpu.sh   # on 2 GPUs: tests/test_gpu.py (every case that runs on 2 GPUs, at most
#     TESTS_TIMEOUT s), then in the time left of BUDGET s eager_host_probe.py on one GPU: one rank of llama-3.3-70b
#     in SP 2 x TP 4, SP 4 x TP 2 and TP 8, eager against the engine's SP-graph rule at 512 tokens per GPU
# Into $OUT: check.log, shutdown_probe.log, sp_graph_test.log, pyspy.txt (only if it hung), p2_tests.log (a);
#   tests_d.log, eager_host_70b.json, probe_d.log (d)
. "$(dirname "$0")/gpu_setup.sh"
python -m pip install -q --no-index --find-links wheels py-spy > /dev/null 2>&1
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tr '\n' ';')"
if [ "${PART:-a}" = a ]; then
  T0=$SECONDS
  # the built-in tiny model on 2 GPUs (TP 2): how long shutdown takes and how the worker ends (0: by itself); py-spy
  # stacks (native frames too) of a worker still alive 6 s into the shutdown
  timeout 120 python - > "$OUT/shutdown_probe.log" 2>&1 << 'PY'
import subprocess, threading, time
from shifttune import LLM, SamplingParams
llm = LLM("tiny", tensor_parallel_size=2, device="cuda", dtype="bfloat16")
llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4))
procs = llm.llm_engine.executor.procs
def spy():
    time.sleep(6)
    for p in procs:
        if p.is_alive():
            print(subprocess.run(["py-spy", "dump", "--native", "--pid", str(p.pid)], capture_output=True, text=True).stdout)
threading.Thread(target=spy, daemon=True).start()
start = time.time()
llm.shutdown()
print(f"SHUTDOWN {time.time() - start:.1f} s, worker exit codes {[p.exitcode for p in procs]}")
PY
  stamp "shutdown probe rc=$?: $(grep SHUTDOWN "$OUT/shutdown_probe.log")"
  timeout 560 python -m pytest -v -s -x -p no:cacheprovider --durations=0 -o faulthandler_timeout=500 \
    tests/test_gpu.py -k "sp_mode_graphs_past" > "$OUT/sp_graph_test.log" 2>&1 &
  PID=$!
  for _ in $(seq "${WATCH:-300}"); do kill -0 $PID 2> /dev/null || break; sleep 1; done
  if kill -0 $PID 2> /dev/null; then
    stamp "still running after ${WATCH:-300} s: py-spy stacks of every python process into pyspy.txt"
    for p in $(pgrep python); do
      echo "== pid $p: $(tr '\0' ' ' < /proc/$p/cmdline | cut -c1-200)" >> "$OUT/pyspy.txt"
      timeout 20 py-spy dump --pid "$p" >> "$OUT/pyspy.txt" 2>&1
    done
  fi
  wait $PID
  stamp "SP-graph test rc=$? in $((SECONDS - T0)) s: $(tail -1 "$OUT/sp_graph_test.log")"
  grep -E "PASSED|FAILED|Error|assert|slowest|[0-9.]+s (setup|call|teardown)" "$OUT/sp_graph_test.log" | head -20 \
    | cut -c1-300 | tee -a "$LOG"
  LEFT=$((${BUDGET:-540} - (SECONDS - T0)))
  if [ $LEFT -gt 60 ]; then
    timeout $LEFT python -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "${P2_K:-1-2 or 2-1 or symmetric}" \
      --deselect "tests/test_gpu.py::test_sp_mode_graphs_past_the_graph_limit_on_gpus" > "$OUT/p2_tests.log" 2>&1
    stamp "P = 2 cases of tests/test_gpu.py rc=$? (timeout $LEFT s): $(tail -1 "$OUT/p2_tests.log")"
    grep -E "FAILED|Error" "$OUT/p2_tests.log" | head -10 | cut -c1-300 | tee -a "$LOG"
  fi
fi
if [ "${PART:-a}" = d ]; then
  T0=$SECONDS
  timeout "${TESTS_TIMEOUT:-360}" python -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$OUT/tests_d.log" 2>&1
  stamp "tests/test_gpu.py rc=$? in $((SECONDS - T0)) s: $(tail -1 "$OUT/tests_d.log")"
  grep -E "FAILED|Error" "$OUT/tests_d.log" | head -10 | cut -c1-300 | tee -a "$LOG"
  LEFT=$((${BUDGET:-560} - (SECONDS - T0)))
  if [ $LEFT -gt 60 ]; then
    timeout $LEFT python profiles/commands/eager_host_probe.py --model llama-3.3-70b --layouts sp:2:4,sp:4:2,tp:8:1 \
      --steps 4096x4096,8192x4096 --sp-graph-tokens-per-gpu 512 --out "$OUT/eager_host_70b.json" > "$OUT/probe_d.log" 2>&1
    stamp "eager_host_probe 70B rc=$? (timeout $LEFT s)"
    grep -E "^(tp|sp) |Error" "$OUT/probe_d.log" | cut -c1-300 | tee -a "$LOG"
  fi
fi
