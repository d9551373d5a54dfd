#!/usr/bin/env bash
# Writes a Debian bookworm root filesystem as a tar file ($1) that stands in for the
# python:3.11-slim-bookworm and redis:7.4-alpine images: Debian's python3 and pip (the python
# command included), redis-server and redis-cli, and the apt sources of the real images.
# standin-bases.sh keys the images made from it by a hash of this file: change the recipe here.
set -euo pipefail
out=$1
mirror=${CNCLIP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${CNCLIP_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
# The python image lets pip install into the system Python; Debian's marker file forbids it.
mmdebstrap --variant=apt \
  --include=python3,python3-pip,python-is-python3,passwd,ca-certificates,redis-server \
  --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
  --customize-hook='mkdir -p "$1"/data' \
  bookworm "$out" \
  "deb $mirror bookworm main" \
  "deb $mirror bookworm-updates main" \
  "deb $security bookworm-security main"
