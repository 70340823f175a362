#!/usr/bin/env bash
# How far the re-measured H200 op tables move the predicted P = 1 profile (CPU, from the repository root): each
# model's table before session 20 (83a9df5) against the one shipped now, `profile --predict` with each and
# `profile --compare OLD NEW` (its "error" is the new prediction against the old one; negative: faster).
#   bash profiles/runs/s20_h200/f_op_table_qwen3_8b/table_shift.sh > profiles/runs/s20_h200/f_op_table_qwen3_8b/table_shift.txt
set -eu
W=$(mktemp -d)
S="python -m shifttune.cli profile"
for M in llama-3.1-8b qwen3-8b; do
  git show 83a9df5:shifttune/data/op_tables/${M}_h200.json > $W/old.json
  $S --model $M --predict --gpus 1xh200 --op-table $W/old.json --out $W/old_pred.json > /dev/null 2>&1
  $S --model $M --predict --gpus 1xh200 --op-table shifttune/data/op_tables/${M}_h200.json --out $W/new_pred.json \
    > /dev/null 2>&1
  $S --compare $W/old_pred.json $W/new_pred.json --out $W/cmp.json > $W/cmp.txt 2>&1
  echo "$M, the new table's P = 1 prediction against the old one's: $(grep overall $W/cmp.txt)"
  python - "$W/cmp.json" <<'PY'
import json, statistics, sys
e = [p["error"] for p in json.load(open(sys.argv[1]))["points"]]
print(f"  signed: median {100 * statistics.median(e):+.1f}%; {sum(x < 0 for x in e)} of {len(e)} points faster")
PY
done
rm -rf $W
