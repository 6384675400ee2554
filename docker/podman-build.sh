#!/bin/sh
# Build docker/Dockerfile.cpu with podman where there is no Docker daemon and no registry of base
# images (`make image`; ../shared/CONTAINER_FACTS.md of the dev machines says why each step):
#   1. a base image from Debian packages (debootstrap: python3, python3-venv), made once;
#   2. the local wheel folder (torch's CPU build is not on PyPI under its +cpu name) served on
#      127.0.0.1 for the build's RUN steps, which share this machine's network;
#   3. podman build --isolation=chroot on the vfs driver, Docker format (keeps HEALTHCHECK),
#      --layers=false: vfs has no copy-on-write, so every cached step would be a full copy of
#      the root filesystem (16 steps of 4.4 GB filled this machine's disk on the first try).
# Environment: IMAGE, BASE_IMAGE, DEBIAN_MIRROR, WHEELS_DIR, PYPI_INDEX_URL (defaults below).
set -eu

IMAGE="${IMAGE:-localhost/critic-rm:cpu}"
BASE_IMAGE="${BASE_IMAGE:-localhost/critic-rm-base:bookworm-dev}"
WHEELS_DIR="${WHEELS_DIR:-/opt/wheels}"
PYPI_INDEX_URL="${PYPI_INDEX_URL:-https://pypi.org/simple}"
# The mirror apt itself uses on this machine (deb822 or one-line sources), else Debian's CDN.
DEBIAN_MIRROR="${DEBIAN_MIRROR:-$(
    { sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null
      sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list 2>/dev/null
    } | grep -v security | head -n 1
)}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman debootstrap
fi

work="$(mktemp -d)"
server=""
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# podman's default ulimits cannot be set in this sandbox ("setrlimit RLIMIT_NOFILE").
printf '[containers]\ndefault_ulimits = []\n' >"$work/containers.conf"
export CONTAINERS_CONF="$work/containers.conf"
podman() { command podman --storage-driver=vfs "$@"; }

if ! podman image exists "$BASE_IMAGE"; then
    echo "base image $BASE_IMAGE: debootstrap bookworm from $DEBIAN_MIRROR"
    # python3-dev: the headers python:3.11-slim ships too; torch.compile (inductor) builds its
    # CPU kernels against Python.h when the engines start.
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-dev,ca-certificates,passwd \
        bookworm "$work/rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log"; exit 1; }
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    tar -C "$work/rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
    rm -rf "$work/rootfs"
fi

build_args="--build-arg PYTHON_IMAGE=$BASE_IMAGE --build-arg PYPI_INDEX_URL=$PYPI_INDEX_URL"
if [ -d "$WHEELS_DIR" ]; then
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    python3 -m http.server --bind 127.0.0.1 --directory "$WHEELS_DIR" "$port" >/dev/null 2>&1 &
    server=$!
    # torch from PyPI's index plus the local folder; the public CPU index is not reachable here.
    build_args="$build_args --build-arg TORCH_INDEX_URL=$PYPI_INDEX_URL"
    build_args="$build_args --build-arg WHEELS_URL=http://127.0.0.1:$port/"
fi

# A TLS-intercepting proxy's CA (pip's own setting on this machine) reaches pip as a build
# secret: it is mounted for the RUN steps that install, never stored in a layer.
ca="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
if [ -n "$ca" ] && [ -s "$ca" ]; then
    build_args="$build_args --secret id=pip_ca,src=$ca"
fi

started="$(date +%s)"
# shellcheck disable=SC2086 # build_args is a list of words
podman build --isolation=chroot --format docker --layers=false $build_args \
    -f docker/Dockerfile.cpu -t "$IMAGE" .
echo "built $IMAGE in $(($(date +%s) - started)) s"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$IMAGE"
