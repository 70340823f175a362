#!/usr/bin/env bash
# Issue 12's simulator-vs-server table on one GPU, in one device call of about 5 minutes (carry wheels for the
# server's packages):
#   bash profiles/commands/validate_gpu.sh
# 1. a profile of llama-3.1-8b measured on this card, on the grid the workload needs (decode batches 1-256,
#    prefill 512-2048, contexts 512 and 2048: the requests hold 1024-1152 tokens), 2. `shifttune serve` on the
#    same card, 3. `shifttune recommend --validate` at a low, a medium and a near-saturating rate (2, 6, 12/s;
#    `shifttune recommend --profile <profile> --input-len 1024 --output-len 128` prints about half of
#    saturation), 4. the server's per-request and per-step timestamps (`/v1/shifttune/trace`) of the whole run.
# Into $OUT (5 files): profile_*.json, validate_*.json (table, the simulation's settings, the probe's host time,
# per-rate diagnostics), trace_*.json, validate.log (every step's output, then a summary), serve.log.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOG=$OUT/validate.log
python -m pip install -q --no-index --find-links wheels fastapi uvicorn prometheus_client httpx plotext > /dev/null 2>&1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
M=llama-3.1-8b
G=$(python -c "import torch; from shifttune.recommend.gpus import gpu_slug; print(gpu_slug(torch.cuda.get_device_name(0)))")
P=$OUT/profile_${M}_${G}x1.json
V=$OUT/validate_${M}_${G}x1.json
stamp() { echo "[$(date +%T)] $*" >> "$LOG"; }
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
stamp "commit: $(git rev-parse --short HEAD 2>/dev/null) (working tree as carried)"
stamp profile
timeout 150 python -m shifttune.cli profile --model $M --gpus 1 --load-format dummy --iters 5 --warmup 2 --no-tui \
  --tokens 1,2,4,8,16,32,64,128,256,512,1024,2048 --contexts 512,2048 --out "$P" >> "$LOG" 2>&1
stamp "profile rc=$?"
stamp serve
python -m shifttune.cli serve $M --load-format dummy --no-tui --port 8000 > "$OUT/serve.log" 2>&1 &
SRV=$!
for _ in $(seq 90); do curl -sf http://127.0.0.1:8000/health > /dev/null && break; sleep 2; done
stamp "serve up: $(curl -s http://127.0.0.1:8000/v1/shifttune/live?after=999999999 | head -c 400)"
timeout 260 python -m shifttune.cli recommend --validate http://127.0.0.1:8000 --profile "$P" \
  --rate 2,6,12 --num-requests 150 --input-len 1024 --output-len 128 --spread 0 --out "$V" >> "$LOG" 2>&1
stamp "validate rc=$?"
curl -s "http://127.0.0.1:8000/v1/shifttune/trace?since=0" > "$OUT/trace_${M}_${G}x1.json"
stamp "trace: $(wc -c < "$OUT/trace_${M}_${G}x1.json") bytes"
kill -INT $SRV
wait $SRV
stamp "serve rc=$?"
python - "$V" >> "$LOG" 2>&1 <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print("simulation:", json.dumps(d["simulation"], indent=1))
for r in d["rows"]:
    print(f"rate {r['rate']:g}: " + "  ".join(f"{k} {r[k]['predicted']:.2f}/{r[k]['measured']:.2f} "
          f"({100 * r[k]['rel_error']:+.1f}%)" for k in ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms")))
    print("  diagnostics:", json.dumps(r.get("diagnostics"), indent=1))
EOF
stamp done
