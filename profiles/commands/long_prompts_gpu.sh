#!/usr/bin/env bash
# Issue 14's long-prompt benchmark on one GPU, in one device call (~6 min; from the repository root):
#   bash profiles/commands/long_prompts_gpu.sh
# TTFT of one 8k/32k/64k/128k prompt through LLM.generate (first and warm) for both prefill attention paths
# (SDPA/cuDNN and the paged Triton kernel) against the matmul floor, per-layer attention TFLOP/s against
# torch's cuDNN and flash SDPA, the SDPA_MIN_TOKENS sweep, the cost of an unwarmed cuDNN shape, start-up
# seconds, and the memory left after shutdown (two engines in one process). Then: copy the JSON to
# profiles/long_prompts_<card>.json with this command. --breakdown: kernel time by category of one 8192-token chunk
# from 0 and after a 24k prefix (startup.<path>.chunk_breakdown). LP_ARGS: more options (e.g. "--paths sdpa").
set -u
OUT=${OUT:-/tmp/out}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/long_prompts.log"
G=$(python -c "import torch; from shifttune.recommend.gpus import gpu_slug; print(gpu_slug(torch.cuda.get_device_name(0)))")
timeout 560 python -m shifttune.profile.long_prompts --model llama-3.1-8b --breakdown ${LP_ARGS:-} --out "$OUT/long_prompts_$G.json" 2>&1 \
  | grep -v Warning | tee -a "$OUT/long_prompts.log" | tail -40
