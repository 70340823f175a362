# Sourced by the session GPU scripts (`. profiles/commands/gpu_setup.sh`), from the repository root on the device:
# $OUT (the device's output folder), this tree on PYTHONPATH, the test packages from the carried wheels/,
# `stamp`, which prints a timed line and appends it to $OUT/check.log, `gpu_tests`, `loop_on`, `tree_path` and
# `in_tree`.
set -u
OUT=${OUT:-/tmp/out}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
LOG=$OUT/check.log
python -m pip install -q --no-index --find-links wheels pytest pytest-timeout hypothesis > /dev/null 2>&1
stamp() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
gpu_tests() {  # seconds: tests/test_gpu.py and tests/test_kernels.py into $OUT/tests.log, their last line and failures
  local t0=$SECONDS
  timeout "$1" python -m pytest -q -p no:cacheprovider --durations=10 tests/test_gpu.py tests/test_kernels.py \
    > "$OUT/tests.log" 2>&1
  stamp "tests/test_gpu.py tests/test_kernels.py rc=$? in $((SECONDS - t0)) s: $(tail -1 "$OUT/tests.log")"
  grep -E "FAILED|Error" "$OUT/tests.log" | head -10 | cut -c1-300 | tee -a "$LOG"
}
loop_on() {  # tree, seconds, cases, out, [more flags]: this tree's loop_overhead.py (the public API only) on a tree
  (cd "$1" && PYTHONPATH=$PWD timeout "$2" python "$OLDPWD/shifttune/profile/loop_overhead.py" --model llama-3.1-8b \
    --cases "$3" --out "$4" ${5:---no-offline} 2>&1 | grep -v -i warn | grep -E "batch|offline" | tee -a "$LOG")
}
tree_path() {  # a tree's name: "after" is this tree, another one the carried gpu_old/s28_<name>/ (sessions 28-30)
  if [ "$1" = after ]; then echo "$PWD"; else echo "$PWD/gpu_old/s28_$1"; fi
}
in_tree() {  # tree name, seconds, command...: the command run from that tree's root with the tree on PYTHONPATH
  local path  # NOTE: `python -m` puts the working directory first on sys.path: run from the tree itself
  path=$(tree_path "$1")
  (cd "$path" && PYTHONPATH=$path timeout "$2" "${@:3}")
}
