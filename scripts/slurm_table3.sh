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
port=${RAY_PORT:-6379}
cpus=${SLURM_CPUS_PER_TASK:-$(nproc)}
gpus=${SLURM_GPUS_ON_NODE:-0}
mapfile -t nodes < <(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname)}")
head_node=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname -I | awk '{print $1}')

stop_ray() { srun --overlap --nodes="${#nodes[@]}" --ntasks-per-node=1 ray stop --force >/dev/null 2>&1 || true; }
trap stop_ray EXIT

srun --overlap --nodes=1 --ntasks=1 -w "$head_node" \
    ray start --head --node-ip-address="$head_ip" --port="$port" --num-cpus="$cpus" --num-gpus="$gpus" \
    --include-dashboard=false --block &
alive() {  # live nodes of the cluster (0 while the head is not up)
    python -c "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))" \
        "$head_ip:$port" 2>/dev/null || echo 0
}
until (( $(alive) >= 1 )); do sleep 5; done
for node in "${nodes[@]:1}"; do
    srun --overlap --nodes=1 --ntasks=1 -w "$node" \
        ray start --address="$head_ip:$port" --num-cpus="$cpus" --num-gpus="$gpus" --block &
done
until (( $(alive) >= ${#nodes[@]} )) || (( SECONDS > 300 )); do sleep 5; done

palbert table3 --address "$head_ip:$port" --cpus-per-run "${CPUS_PER_RUN:-2}" --jobs "${JOBS:-64}" "$@"
