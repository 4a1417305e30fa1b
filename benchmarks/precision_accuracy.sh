#!/usr/bin/env bash
# What bf16 autocast costs in dev accuracy: trains the default configuration twice, with
# train.precision=bf16 and =fp32 (same seed, same data), side by side, and prints both dev scores.
#
#   bash benchmarks/precision_accuracy.sh [WORKDIR] [extra yaml overrides as section.key=value ...]
#
# Runs the stage modules directly (no dvc needed, e.g. on a GPU node with only PyTorch), in two copies
# of the project under WORKDIR (default /tmp/palbert-precision). The data mirror comes from
# $PALBERT_DATA_MIRROR. On a single GPU both trainings share it; on a CPU run them one at a time
# (PALBERT_SEQUENTIAL=1), they would only slow each other down.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/palbert-precision}
shift || true
python=${PYTHON:-python3}
rm -rf "$work" && mkdir -p "$work"

copy_project() {  # the project's files, without data, models or the local MLflow store
  mkdir -p "$1"
  (cd "$here" && tar --exclude=./.git --exclude=./.venv --exclude=./.gpu --exclude=./data --exclude=./models \
     --exclude=./checkpoints --exclude=./mlflow.db --exclude=./mlruns -cf - .) | (cd "$1" && tar -xf -)
}

set_params() {  # set_params DIR key=value ...
  local dir=$1; shift
  "$python" - "$dir/params.yaml" "$@" <<'PY'
import sys, yaml
path, *pairs = sys.argv[1:]
params = yaml.safe_load(open(path))
for pair in pairs:
    key, value = pair.split("=", 1)
    section, name = key.split(".", 1)
    params[section][name] = yaml.safe_load(value)
yaml.safe_dump(params, open(path, "w"), sort_keys=False)
PY
}

copy_project "$work/bf16"
set_params "$work/bf16" tracking.enabled=false train.precision=bf16 "$@"
(cd "$work/bf16" && "$python" -m stages.fetch && for ds in sst quora sts snli cfimdb; do
   "$python" -m stages.prepare "$ds"; done) > "$work/prepare.log" 2>&1
copy_project "$work/fp32"
cp -r "$work/bf16/data" "$work/fp32/data"
set_params "$work/fp32" tracking.enabled=false train.precision=fp32 "$@"

run() { (cd "$work/$1" && "$python" -m stages.train && "$python" -m stages.evaluate) > "$work/$1.log" 2>&1; }
started=$(date +%s)
if [ "${PALBERT_SEQUENTIAL:-0}" = 1 ]; then
  run bf16; run fp32
else
  run bf16 & bf16=$!; run fp32 & fp32=$!
  wait "$bf16"; wait "$fp32"
fi
echo "both runs: $(( $(date +%s) - started )) s"
for precision in bf16 fp32; do
  echo "== $precision: $(grep -o 'trained [0-9]* steps in [0-9]* s' "$work/$precision.log" | tail -1)"
  cat "$work/$precision/metrics/dev.json"
done
