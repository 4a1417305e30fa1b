#!/usr/bin/env bash
# Table 3 on a Slurm allocation: a Ray head on the job's first node, a Ray worker on every other node, then
# `palbert table3 --address` on the head. Arguments go to `palbert table3`:
#
#   sbatch scripts/slurm_table3.sh --scale reduced                       # 2 CPU nodes as below
#   sbatch --nodes=4 --gpus-per-node=1 scripts/slurm_table3.sh --scale full --gpus-per-run 0.125
#
# Run it from a clone of the project with its environment installed (scripts/setup.sh) on a path every node
# sees, or the same environment on each node. Nothing else is shared: each run checks out the driver's commit
# from a git bundle that travels with it, prepares data into its node's --node-cache, and returns its record
# to this script's `palbert table3`, which writes results/table3/<id>/ here. MLflow: pass a tracking server
# every node reaches (--tracking-uri http://HOST:5000 or MLFLOW_TRACKING_URI); the default SQLite file suits
# one node only. A job cut short by its time limit keeps every finished record: submit it again.
# RAY_PORT (default 6379) is the head's port; RAY_START_ARGS go to every `ray start` (e.g. --temp-dir,
# --object-store-memory); CPUS_PER_RUN (default 2) and JOBS (default 64) to `palbert table3`.
#SBATCH --job-name=palbert-table3
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --output=palbert-table3-%j.out
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$(pwd)}"
if [[ -f .venv/bin/activate ]]; then
    . .venv/bin/activate
fi
export RAY_USAGE_STATS_ENABLED=0
# Ray's token authentication, the same mode on the head, the workers and the driver: `ray start` turns it on, and a
# client joining by address needs RAY_AUTH_MODE=token to send the token (~/.ray/auth_token on a shared home, made
# here once if missing, or RAY_AUTH_TOKEN in the job's environment).
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [[ "$RAY_AUTH_MODE" == token && -z "${RAY_AUTH_TOKEN:-}${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    ray get-auth-token --generate >/dev/null
fi
port=${RAY_PORT:-6379}
cpus=${SLURM_CPUS_PER_TASK:-$(nproc)}
gpus=${SLURM_GPUS_ON_NODE:-0}
mapfile -t nodes < <(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname)}")
head_node=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname -I | awk '{print $1}')

# Stopping a `ray start --block` step stops the Ray processes it started on its node; `ray stop` would also stop
# other users' Ray instances on a shared node.
stop_ray() {
    local steps
    steps=$(jobs -p)
    if [[ -n "$steps" ]]; then
        kill $steps 2>/dev/null || true
        wait $steps 2>/dev/null || true
    fi
}
trap stop_ray EXIT

srun --overlap --nodes=1 --ntasks=1 -w "$head_node" \
    ray start --head --node-ip-address="$head_ip" --port="$port" --num-cpus="$cpus" --num-gpus="$gpus" \
    --include-dashboard=false ${RAY_START_ARGS:-} --block &
alive() {  # live nodes of the cluster (0 while the head is not up)
    python -c "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))" \
        "$head_ip:$port" 2>/dev/null || echo 0
}
until (( $(alive) >= 1 )); do sleep 5; done
for node in "${nodes[@]:1}"; do
    srun --overlap --nodes=1 --ntasks=1 -w "$node" \
        ray start --address="$head_ip:$port" --num-cpus="$cpus" --num-gpus="$gpus" ${RAY_START_ARGS:-} --block &
done
until (( $(alive) >= ${#nodes[@]} )) || (( SECONDS > 300 )); do sleep 5; done

palbert table3 --address "$head_ip:$port" --cpus-per-run "${CPUS_PER_RUN:-2}" --jobs "${JOBS:-64}" "$@"
