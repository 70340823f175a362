#!/usr/bin/env bash
# Issue 13 on 4 GPUs: `multi_gpu.sh` with GPUS=4 (its parts: tests, profile, serve, tui), e.g.
#   TESTS_K="1-4 or invariance" PART=tests bash profiles/commands/multi_gpu_4_gpu.sh
# Sessions 10 and 13 ran this file's earlier text (`git show 1fb4f9a:profiles/commands/multi_gpu_4_gpu.sh`), whose
# tests part is the same as multi_gpu.sh's but for a 420 s limit and 120 s per test.
GPUS=4 exec bash "$(dirname "$0")/multi_gpu.sh" "$@"
