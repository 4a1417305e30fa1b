#!/usr/bin/env bash
# A fixed-seed short run of the whole pipeline at one commit, for showing that a refactor changes no result:
# prints the dev metrics per epoch, a SHA-256 over every trained tensor and one over the prediction files.
# Run it at two commits and compare the JSON (the same machine and precision for both).
#   usage: scripts/fixed_seed_run.sh COMMIT OUT.json   (from the repository root, .venv set up, mirror in
#          $PALBERT_DATA_MIRROR or ../shared/data; about 5 min on 2 cores)
set -euo pipefail
commit=$1; out=$(realpath -m "$2"); repo=$(git rev-parse --show-toplevel)
work=$(mktemp -d "${TMPDIR:-/tmp}/palbert-fixed-seed.XXXX")
git clone -q "$repo" "$work/p" && cd "$work/p" && git checkout -q "$commit"
ln -s "$repo/.venv" .venv && echo ".venv" >> .git/info/exclude
. .venv/bin/activate
export PALBERT_DATA_MIRROR=${PALBERT_DATA_MIRROR:-$(realpath "$repo/../shared/data")} PYTHONPATH=$PWD
python - <<'PY'
import yaml
p = yaml.safe_load(open("params.yaml"))
p["data"]["subset"] = 300
p["train"].update(epochs=2, steps_per_epoch=40, checkpoint_every=1000)
p["tracking"]["enabled"] = False
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
PY
dvc repro > "$work/repro.log" 2>&1 || { tail -30 "$work/repro.log"; exit 1; }
python - "$out" "$(git rev-parse HEAD)" <<'PY'
import glob, hashlib, json, sys
from palbert.model import load_model
model, _ = load_model("models/best")
weights = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    weights.update(name.encode()); weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
predictions = hashlib.sha256(b"".join(open(f, "rb").read() for f in sorted(glob.glob("predictions/*.csv"))))
summary = json.load(open("metrics/train.json"))
result = {"commit": sys.argv[2], "precision": summary["precision"], "weights_sha256": weights.hexdigest(),
          "dev_per_epoch": summary["dev_per_epoch"], "dev": json.load(open("metrics/dev.json")),
          "predictions_sha256": predictions.hexdigest()}
json.dump(result, open(sys.argv[1], "w"), indent=1); print(json.dumps(result))
PY
rm -rf "$work"
