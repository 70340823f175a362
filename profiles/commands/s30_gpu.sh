#!/usr/bin/env bash
# Session 30's device checks, from the repository root (carry: wheels):
#   PART=cluster bash profiles/commands/s30_gpu.sh   # issue 14: cluster_decode_probe.py (decode attention at batch 1-2
#     in one launch, the splits merged through distributed shared memory), next to the engine's attention
#   PART=b18 bash profiles/commands/s30_gpu.sh       # issue 14: wide_split_probe, Llama-3.1-8B's heads, batch 1-8 x
#     2k-32k, the engine's attention on each tree of TREES (default "before30 after", ROUNDS times in turn; before30:
#     gpu_old/s28_before30, b6e89c5's shifttune/, the block table read after the wait)
#   PART=marginal bash profiles/commands/s30_gpu.sh  # decode_attention_marginal.py (batch 1, 2, 4 at 2k and 8k) on each
#     tree of TREES, through s28_gpu.sh's part
#   PART=lp bash profiles/commands/s30_gpu.sh        # issue 14: long_prompts (sdpa path, LP_LENGTHS, default 131071;
#     no layer bench) run from each tree of TREES (default "s13 after": s13 = gpu_old/s28_s13, cf8bb3b's shifttune/,
#     the tree of profiles/long_prompts_h100_s13.json), ROUNDS times in turn
#   PART=lpchunk bash profiles/commands/s30_gpu.sh   # long_prompts at 131071 tokens on this tree with the chunk (the
#     engine's max_num_batched_tokens) of each of CHUNKS in turn (default "8192 32768 16384 8192 32768")
#   PART=layers bash profiles/commands/s30_gpu.sh    # long_prompts' per-layer attention bench (after one 8k prompt,
#     sdpa path) from each tree of TREES (default "before30 after": before30's bench hands the engine separate q, k, v)
#   PART=tests bash profiles/commands/s30_gpu.sh     # tests/test_gpu.py tests/test_kernels.py, at most TESTS_TIMEOUT s
# PART may list several parts ("cluster tests"). Into $OUT: check.log and each part's logs / JSON
. "$(dirname "$0")/gpu_setup.sh"
stamp "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tr '\n' ';')"
for part in ${PART:-cluster}; do
case "$part" in
cluster)
  T0=$SECONDS
  timeout "${CLUSTER_TIMEOUT:-300}" python profiles/commands/cluster_decode_probe.py --out "$OUT/cluster_decode.json" \
    ${CLUSTER_ARGS:-} > "$OUT/cluster_decode.log" 2>&1
  stamp "cluster_decode_probe rc=$? in $((SECONDS - T0)) s"
  grep -v -i warn "$OUT/cluster_decode.log" | tail -8 | cut -c1-2000 | tee -a "$LOG" ;;
b18)
  for r in $(seq "${ROUNDS:-2}"); do
    for tree in ${TREES:-before30 after}; do
      path=$(tree_path "$tree"); name=b18_${tree}_$r; T0=$SECONDS
      PYTHONPATH=$path timeout 120 python profiles/commands/wide_split_probe.py --options p2_t128_w4_s1_mdc32 \
        --batches 1,2,3,4,5,6,7,8 --contexts 2048,4096,8192,32768 --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
      stamp "wide_split_probe b1-8 32/8 $tree round $r rc=$? in $((SECONDS - T0)) s"
      grep -E "^b=[12] C=(2048|4096)" "$OUT/$name.log" | tee -a "$LOG"
    done
  done
  (cd "$OUT" && tar czf b18.tgz b18_* && rm -f b18_*) ;;
lp)
  for r in $(seq "${ROUNDS:-2}"); do
    for tree in ${TREES:-s13 after}; do
      name=lp_${tree}_$r; T0=$SECONDS
      in_tree "$tree" "${LP_TIMEOUT:-150}" python -m shifttune.profile.long_prompts --model llama-3.1-8b --paths sdpa \
        --lengths "${LP_LENGTHS:-131071}" --no-layer-bench --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
      stamp "long_prompts $tree round $r rc=$? in $((SECONDS - T0)) s"
      grep -E "^sdpa " "$OUT/$name.log" | tee -a "$LOG"
    done
  done ;;
lpchunk)
  i=0
  for c in ${CHUNKS:-8192 32768 16384 8192 32768}; do
    i=$((i + 1)); name=lpc_${c}_$i; T0=$SECONDS
    timeout "${LP_TIMEOUT:-110}" python -m shifttune.profile.long_prompts --model llama-3.1-8b --paths sdpa \
      --lengths "${LP_LENGTHS:-131071}" --no-layer-bench --chunk "$c" --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
    stamp "long_prompts chunk $c ($i) rc=$? in $((SECONDS - T0)) s"
    grep -E "^sdpa |engine up" "$OUT/$name.log" | cut -c1-200 | tee -a "$LOG"
  done ;;
layers)
  for tree in ${TREES:-before30 after}; do
    name=lpl_$tree; T0=$SECONDS
    in_tree "$tree" "${LP_TIMEOUT:-200}" python -m shifttune.profile.long_prompts --model llama-3.1-8b --paths sdpa \
      --lengths 8192 --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
    stamp "long_prompts layer bench $tree rc=$? in $((SECONDS - T0)) s"
    grep -E "^layer |^sdpa " "$OUT/$name.log" | tee -a "$LOG"
  done
  (cd "$OUT" && tar czf layers.tgz lpl_* && rm -f lpl_*) ;;
marginal)
  TREES=${TREES:-before30 after} PART=marginal bash "$(dirname "$0")/s28_gpu.sh" ;;
tests)
  gpu_tests "${TESTS_TIMEOUT:-480}" ;;
esac
done
