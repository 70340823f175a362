# Sourced by the session GPU scripts (`. profiles/commands/gpu_setup.sh`), from the repository root on the device:
# $OUT (the device's output folder), this tree on PYTHONPATH, the test packages from the carried wheels/, and
# `stamp`, which prints a timed line and appends it to $OUT/check.log.
set -u
OUT=${OUT:-/tmp/out}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
LOG=$OUT/check.log
python -m pip install -q --no-index --find-links wheels pytest pytest-timeout hypothesis > /dev/null 2>&1
stamp() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
