#!/usr/bin/env bash
# The live serving view on one GPU (issue 11), in one device call from the repository root:
#   `shifttune serve llama-3.1-8b --load-format dummy` under the same `shifttune bench` load with the live
#   view in a terminal (tmux if installed, else a pseudo-terminal) and with --no-tui, alternating twice;
#   writes under $OUT/tui_gpu/: tui_capture_cuda.json (mean step time from /metrics shifttune:step_seconds
#   both ways, per mode, the bench's numbers, the view's refresh times), tui_cuda.svg (a screenshot with
#   NVML values), shots_tui_*/ (SVG + the terminal's text), the servers' and benches' logs.
#
#   WHEELS=<dir of wheels> bash scripts/tui_gpu_capture.sh
#
# Packages missing on the machine are installed from $WHEELS (no index); see docs/tui.md for the list.
# MODEL, DEVICE, REPEATS and BENCH (shifttune bench flags) override the defaults; DEVICE=cpu MODEL=tiny runs
# the same on CPU ranks (that is how it was tried before it went to a GPU).
set -euo pipefail

OUT=${OUT:-out}
MODEL=${MODEL:-llama-3.1-8b}
DEVICE=${DEVICE:-cuda}
REPEATS=${REPEATS:-2}
DEST="$OUT/tui_gpu"
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

missing=$(python - <<'EOF'
import importlib.util
need = {"textual": "textual", "fastapi": "fastapi", "uvicorn": "uvicorn", "httpx": "httpx",
        "prometheus_client": "prometheus_client", "pynvml": "nvidia-ml-py", "typer": "typer", "rich": "rich",
        "plotext": "plotext", "safetensors": "safetensors", "tokenizers": "tokenizers",
        "transformers": "transformers"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "installing from ${WHEELS:-?}: $missing"
    python -m pip install -q --no-index --find-links "${WHEELS:?set WHEELS to a directory of wheels}" $missing
fi

{ command -v tmux >/dev/null && echo "terminal: tmux $(tmux -V)" || echo "terminal: no tmux, a pseudo-terminal"; } | tee "$DEST/env.txt"
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv,noheader | tee -a "$DEST/env.txt"
fi
python -c "import torch, textual; print('torch', torch.__version__, 'textual', textual.__version__)" | tee -a "$DEST/env.txt"

args=(--model "$MODEL" --device "$DEVICE" --out "$DEST" --repeats "$REPEATS" --deadline 330 --startup-timeout 240 --shots-limit 40)
if [ -n "${BENCH:-}" ]; then args+=(--bench "$BENCH"); fi
python -m shifttune.tui.capture "${args[@]}" 2>&1 | tee "$DEST/capture.log"
