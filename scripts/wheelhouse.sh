# Sourced by scripts/setup.sh: where pip takes packages from. With PALBERT_WHEELHOUSE=<folder> (made by
# scripts/make_wheelhouse.sh) every package comes from that folder and pip never contacts an index, so a compute
# node without network installs exactly what the folder holds, or stops at the first package it lacks.
if [ -n "${PALBERT_WHEELHOUSE:-}" ]; then
  if [ ! -d "$PALBERT_WHEELHOUSE" ]; then
    echo "PALBERT_WHEELHOUSE=$PALBERT_WHEELHOUSE: no such folder (make one with scripts/make_wheelhouse.sh)" >&2
    exit 2
  fi
  # the environment, not flags, so that pip's own build step (setuptools for `pip install -e .`) obeys it too
  PIP_NO_INDEX=1 PIP_FIND_LINKS="$(cd "$PALBERT_WHEELHOUSE" && pwd)"
  export PIP_NO_INDEX PIP_FIND_LINKS
fi
