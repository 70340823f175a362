#!/usr/bin/env bash
# Everything session 10 changed that no GPU has timed yet, in one one-GPU device call (~9 min; from the
# repository root, carry: wheels, gpu_old):
#   bash profiles/commands/all_gpu.sh
# 1. check_gpu.sh: GPU tests + decode sweep, the sampler bench (new "dummy" logits: the spill rows' new
#    kernels), issue 10's loop benchmark with its timeline and timed run (RoPE writing the KV cache; the
#    sampler change), batch-1 breakdown, offline throughput;
# 2. gemv_probe.py: which torch call reads a bf16 weight fastest at M = 1-8 (batch-1 decode, issue 10);
# 3. long_prompts (SDPA path, 8k / 32k / 128k, no layer bench): TTFT with the SM clock, the floor at the
#    burst and the sustained matmul rate, and --breakdown of one 8192-token chunk (issue 14).
# Into $OUT: all_gpu.tgz (every file) and all_gpu.log (the summaries).
set -u
OUT=${OUT:-/tmp/out}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
LOG=$OUT/all_gpu.log
bash profiles/commands/check_gpu.sh 2>&1 | tail -40 > "$LOG"
timeout 90 python profiles/commands/gemv_probe.py --out "$OUT/gemv_probe.json" 2>&1 | grep -v Warning | tee -a "$LOG"
G=$(python -c "import torch; from shifttune.recommend.gpus import gpu_slug; print(gpu_slug(torch.cuda.get_device_name(0)))")
timeout 200 python -m shifttune.profile.long_prompts --model llama-3.1-8b --breakdown --paths sdpa \
  --lengths 8192,32768,131071 --no-layer-bench --out "$OUT/long_prompts_$G.json" 2>&1 | grep -v Warning | tail -20 >> "$LOG"
cd "$OUT" && tar czf all_gpu.tgz --exclude all_gpu.tgz --exclude all_gpu.log . && find . -type f ! -name 'all_gpu.*' -delete
