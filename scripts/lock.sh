#!/usr/bin/env bash
# Refreshes constraints.txt, the exact versions that bootstrap, CI and both Dockerfiles install:
# resolves the newest releases that pyproject.toml's ranges allow in a fresh environment and pins
# them all. torch and torchvision keep the versions constraints.txt already names (the build
# this machine carries). Run it, run the tests, commit both files together.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
PY=${PYTHON:-python3}
"$PY" -m venv "$work/venv"
# pip names every local index folder it skips; those lines say nothing about this project.
pip() { "$work/venv/bin/python" -m pip -q --disable-pip-version-check "$@" \
          2> >(grep -v "^WARNING: Location '.*' is ignored" >&2); }
grep -E '^(torch|torchvision|cn-clip)==' constraints.txt > "$work/kept.txt"
pip install -U pip wheel
pip install -c "$work/kept.txt" torch torchvision
pip install -c "$work/kept.txt" ".[trainer,crawler,shop,control,test]"
pip install -c "$work/kept.txt" --no-deps cn-clip
{
  echo "# Exact versions of every Python package the project installs (bootstrap, CI, both"
  echo "# Dockerfiles). Refresh with: bash scripts/lock.sh"
  pip freeze --exclude online-cnclip
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pinned packages"
