#!/usr/bin/env bash
# Installs what the project needs on a Debian machine: system packages (Redis, Chromium,
# ChromeDriver, Xvfb, CJK fonts; podman, runc and mmdebstrap for the container test) and the
# Python environment in .venv at the repository root, at the versions in constraints.txt.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(redis-server chromium chromium-driver xvfb xauth fonts-noto-cjk
              podman runc netavark aardvark-dns iptables catatonit mmdebstrap)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)
# pip names every local index folder it skips; those lines say nothing about this project.
pip_quiet() { $VPY -m pip install -q "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2); }
pip_install() { pip_quiet -c constraints.txt "$@"; }
if [ ! -f "$stamp" ]; then
  pip_quiet -U pip wheel
  # Torch first (constraints.txt names the build this machine carries); the extras then
  # accept it as is.
  pip_install torch torchvision
  pip_install -e ".[trainer,crawler,shop,control,test,client]"
  # The original implementation, for the fidelity tests only. --no-deps: it pins an old lmdb.
  pip_install --no-deps cn-clip
  rm -f .venv/.installed-*
  touch "$stamp"
fi
