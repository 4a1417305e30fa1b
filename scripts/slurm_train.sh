#!/usr/bin/env bash
# Multi-node training on Slurm: one torchrun per node, c10d rendezvous on the job's first node.
#
#   sbatch scripts/slurm_train.sh                         # 2 nodes x 4 GPUs as below
#   sbatch --nodes=4 --gpus-per-node=8 scripts/slurm_train.sh
#
# Run it from the project root (on a filesystem every node sees: checkpoints/ must be shared so that
# a resubmitted job resumes). Nodes and processes per node come from Slurm's environment, else from
# params.yaml (distributed.nnodes, distributed.nproc_per_node, distributed.rdzv_endpoint's port).
# Keep the paper's effective batch of 16: train.batch_size x nodes x processes per node = 16 (e.g.
# 2 nodes x 4 GPUs x batch 2), or change train.batch_size / lr knowingly.
#
# Steps: (1) the data stages via `dvc repro` on this node, (2) training under srun + torchrun on every
# node, (3) `dvc commit train` records the outputs in dvc.lock, then `dvc repro evaluate`.
# A worker that dies fails its torchrun (which names the rank); srun --kill-on-bad-exit ends the
# other nodes; resubmit the job to resume from checkpoints/latest.
#SBATCH --job-name=palbert-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
#SBATCH --output=palbert-train-%j.out
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$(pwd)}"
if [[ -f .venv/bin/activate ]]; then
    . .venv/bin/activate
fi

param() {  # param <section> <key>: a value from params.yaml
    python - "$1" "$2" <<'PY'
import sys, yaml
print(yaml.safe_load(open("params.yaml"))[sys.argv[1]][sys.argv[2]])
PY
}

NNODES="${SLURM_JOB_NUM_NODES:-$(param distributed nnodes)}"
NPROC_PER_NODE="${PALBERT_NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-$(param distributed nproc_per_node)}}"
ENDPOINT="$(param distributed rdzv_endpoint)"
PORT="${PALBERT_RDZV_PORT:-${ENDPOINT##*:}}"
if [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
    HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
else
    HEAD_NODE="${ENDPOINT%:*}"
fi
RDZV_ID="${SLURM_JOB_ID:-palbert-$$}"
BATCH="$(param train batch_size)"
echo "palbert: ${NNODES} node(s) x ${NPROC_PER_NODE} process(es), rendezvous ${HEAD_NODE}:${PORT}," \
     "effective batch $((BATCH * NNODES * NPROC_PER_NODE)) (train.batch_size ${BATCH})"

# (1) data: fetch and prepare once, here
dvc repro data_report

# (2) training: srun starts one torchrun per node; each starts NPROC_PER_NODE workers
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( ${SLURM_CPUS_PER_TASK:-$(nproc)} / NPROC_PER_NODE > 0 ? ${SLURM_CPUS_PER_TASK:-$(nproc)} / NPROC_PER_NODE : 1 ))}"
LAUNCH=(torchrun
    --nnodes "$NNODES"
    --nproc-per-node "$NPROC_PER_NODE"
    --rdzv-backend c10d
    --rdzv-endpoint "${HEAD_NODE}:${PORT}"
    --rdzv-id "$RDZV_ID"
    --max-restarts 0
    --module stages.train)
if command -v srun >/dev/null && [[ -n "${SLURM_JOB_ID:-}" ]]; then
    srun --kill-on-bad-exit=1 --ntasks-per-node=1 "${LAUNCH[@]}"
else
    "${LAUNCH[@]}"  # outside Slurm: this machine only (run the same line on the other nodes)
fi

# (3) record the train stage's outputs as DVC would have, then score them
dvc commit --force train
dvc repro evaluate
