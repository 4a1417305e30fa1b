#!/usr/bin/env bash
# Downloads every wheel scripts/setup.sh installs (PyTorch as PALBERT_TORCH names it, requirements-lock.txt with
# the encoder package, and the build backend of `pip install -e .`) into one folder, for machines without network,
# such as a cluster's compute nodes. Run it where there is network and the same Python version, OS and CPU architecture as those machines (the
# login node), then on each machine: PALBERT_WHEELHOUSE=<folder> bash scripts/setup.sh
#   PALBERT_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" bash scripts/make_wheelhouse.sh wheelhouse
#   PALBERT_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" bash scripts/make_wheelhouse.sh wheelhouse
# Further arguments go to `pip download`, e.g. --python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all:
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash scripts/make_wheelhouse.sh <folder> [pip download options]" >&2
  exit 2
fi
dir=$(mkdir -p "$1" && cd "$1" && pwd)   # before the cd below: a relative folder is the caller's
shift
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
# the same torch requirement as setup.sh, into a folder of its own to learn which torch wheel it picked
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
# shellcheck disable=SC2086
"$PY" -m pip download -q -d "$fresh" "$@" ${PALBERT_TORCH:-torch==2.13.0}
torch_wheel=$(basename "$(find "$fresh" -maxdepth 1 -name 'torch-*.whl' | head -n 1)")
mv "$fresh"/*.whl "$dir"/
# the lock's packages need torch too (sentence-transformers, under the encoder package): pin it to that wheel's
# version (local label included, e.g. 2.13.0+cpu) and find it in the folder, so no second torch is downloaded
echo "torch==$(echo "$torch_wheel" | cut -d- -f2)" >"$fresh/torch-constraint.txt"
# palbert's build backend, as pyproject.toml names it, and wheel, which pip's editable build of it asks for, so
# that `pip install -e .` builds without an index
build_requires=$("$PY" -c 'import tomllib; print("\n".join([*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], "wheel"]))')
mapfile -t build_requires <<<"$build_requires"
"$PY" -m pip download -q -d "$dir" --find-links "$dir" -c "$fresh/torch-constraint.txt" "$@" \
  -r requirements-lock.txt "${build_requires[@]}"
echo "$(find "$dir" -maxdepth 1 -name '*.whl' | wc -l) wheels in $dir ($(du -sh "$dir" | cut -f1)); on a machine without network: PALBERT_WHEELHOUSE=$dir bash scripts/setup.sh"
