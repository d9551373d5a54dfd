#!/usr/bin/env bash
# Makes local stand-ins for the base images the Dockerfiles and docker-compose.yml name, for a
# machine that reaches Debian's and PyPI's mirrors but no container registry:
#   (no public name)                               debian-rootfs.sh (mmdebstrap + podman import)
#   redis:7.4-alpine                               that rootfs + redis.Containerfile
#   python:3.11-slim-bookworm                      that rootfs + python.Containerfile
#   localhost/cnclip-standin/pytorch-cpu:<hash>    that + pytorch-cpu.Containerfile
# Each is tagged with a hash of its recipe, so a run with an unchanged recipe does nothing.
# Prints the torch base's name. Needs root, podman and mmdebstrap; set CONTAINERS_CONF to
# containers.conf beside this file. Build output goes to $CNCLIP_STANDIN_LOG (default stderr).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
log=${CNCLIP_STANDIN_LOG:-/dev/stderr}

hash_of() { cat "$@" | sha256sum | cut -c1-12; }
# The torch stand-in is rebuilt when the pins of torch or its CUDA libraries change.
torch_pins=$(grep -E '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==' "$repo/constraints.txt")
ca_bundle=/etc/ssl/certs/ca-certificates.crt
debian_tag=localhost/cnclip-standin/debian:$(hash_of "$here/debian-rootfs.sh")
redis_tag=localhost/cnclip-standin/redis:$(
  { cat "$here/redis.Containerfile" "$here/redis-entrypoint.sh"; echo "$debian_tag"; } | hash_of -)
python_tag=localhost/cnclip-standin/python:$(
  { cat "$here/python.Containerfile" "$ca_bundle"; echo "$debian_tag"; } | hash_of -)
torch_tag=localhost/cnclip-standin/pytorch-cpu:$(
  { cat "$here/pytorch-cpu.Containerfile"; echo "$torch_pins $python_tag"; } | hash_of -)

if ! podman image exists "$debian_tag"; then
  echo "making the Debian stand-in $debian_tag" >&2
  rootfs=$(mktemp --suffix=.tar)
  trap 'rm -f "$rootfs"' EXIT
  bash "$here/debian-rootfs.sh" "$rootfs" >>"$log" 2>&1
  podman import --quiet "$rootfs" "$debian_tag" >/dev/null
  rm -f "$rootfs"
fi

if ! podman image exists "$redis_tag"; then
  echo "making the redis stand-in $redis_tag" >&2
  podman build --build-arg "DEBIAN_BASE=$debian_tag" -f "$here/redis.Containerfile" \
    -t "$redis_tag" "$here" >>"$log" 2>&1
fi
podman tag "$redis_tag" docker.io/library/redis:7.4-alpine

if ! podman image exists "$python_tag"; then
  echo "making the python stand-in $python_tag" >&2
  context=$(mktemp -d)
  cp "$ca_bundle" "$context/ca-certificates.crt"
  podman build --build-arg "DEBIAN_BASE=$debian_tag" -f "$here/python.Containerfile" \
    -t "$python_tag" "$context" >>"$log" 2>&1
  rm -rf "$context"
fi
podman tag "$python_tag" docker.io/library/python:3.11-slim-bookworm

if ! podman image exists "$torch_tag"; then
  echo "making the torch stand-in $torch_tag" >&2
  mounts=()
  for path in /etc/pip.conf /etc/xdg/pip /root/.config/pip /opt/pypi /opt/pypi-more /opt/wheels; do
    if [ -e "$path" ]; then mounts+=(--volume "$path:$path:ro"); fi
  done
  context=$(mktemp -d)
  cp "$repo/constraints.txt" "$context/"
  podman build --network host "${mounts[@]}" --build-arg "PYTHON_BASE=$python_tag" \
    -f "$here/pytorch-cpu.Containerfile" -t "$torch_tag" "$context" >>"$log" 2>&1
  rm -rf "$context"
fi
echo "$torch_tag"
