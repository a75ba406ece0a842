#!/usr/bin/env bash
# The compose smoke test: build the images, bring the cpu profile up, put SmolLM2 into the models
# volume, run a one-round loop over the synthetic world with the probe scaled to 2 replicas, check
# that every sample of the round has one outcome and the report, have the synthesizer settle a
# small job from a tool file, tear down.
#
#   bash scripts/docker/compose-smoke.sh [--out bench/results/compose_smoke.json]
#
# Needs a Docker engine (scripts/docker/engine.sh starts one on a Debian machine without) and
# Compose 2.26+. Base images come from the registry, or where none is reachable from
# scripts/docker/local-images.sh; PyTorch's CPU index likewise, or a local torch wheel served on
# loopback. LOOPTOOL_SMOKE_NETWORK=bridge runs compose.yaml as users do; the default adds
# compose.host-network.yaml (host networking only, as on LoopTool's own machines).
# LOOPTOOL_SMOKE_KEEP=1 leaves the stack up.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=""
[ "${1:-}" = "--out" ] && out=$2

project=looptool-smoke
work=$(mktemp -d /tmp/looptool-smoke.XXXXXX)
chmod 0777 "$work"
export LOOPTOOL_WORK=$work LOOPTOOL_ENV_FILE=$work/looptool.env VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
files=(-f compose.yaml)
[ "${LOOPTOOL_SMOKE_NETWORK:-host}" = host ] && files+=(-f compose.host-network.yaml)
compose() { docker compose -p "$project" "${files[@]}" --profile cpu "$@"; }
declare -A seconds
step() { # step NAME COMMAND...: run and time one phase
    local name=$1 start=$SECONDS
    shift
    echo "== $name" >&2
    "$@"
    seconds[$name]=$((SECONDS - start))
}
server_pid=""
cleanup() {
    status=$?
    if [ $status -ne 0 ]; then
        compose ps -a >&2 || true
        compose logs --no-color --tail 40 >&2 || true
    fi
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
    if [ "${LOOPTOOL_SMOKE_KEEP:-0}" != 1 ]; then
        compose --profile tools down -v --remove-orphans >/dev/null 2>&1 || true
        rm -rf "$work"
    fi
    exit $status
}
trap cleanup EXIT

docker info --format '{{.ServerVersion}}' >/dev/null || { echo "no Docker engine answers (scripts/docker/engine.sh starts one)" >&2; exit 1; }
engine=$(docker version --format '{{.Server.Version}}')
compose_version=$(docker compose version --short)

base_images() {
    for image in python:3.11-slim "$(sed -n 's/^ *image: *\(nats:[^ ]*\).*/\1/p' compose.yaml | head -1)"; do
        docker image inspect "$image" >/dev/null 2>&1 || timeout 120 docker pull -q "$image" >/dev/null 2>&1 || {
            echo "$image: no registry answers; building local stand-ins" >&2
            bash scripts/docker/local-images.sh >&2
            return
        }
    done
}

torch_index() { # PyTorch's CPU index, or the local torch wheel pip would use, served on loopback
    if [ -n "${TORCH_INDEX_URL:-}" ] || curl -sf --max-time 10 -o /dev/null https://download.pytorch.org/whl/cpu/torch/; then
        return
    fi
    local wheel
    wheel=$(ls /opt/wheels/torch-2.13.0+cpu-*.whl $(pip config get global.find-links 2>/dev/null)/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1) || true
    [ -n "$wheel" ] || { echo "PyTorch's CPU index is unreachable and no torch 2.13.0+cpu wheel is on disk" >&2; exit 1; }
    mkdir -p "$work/index/simple/torch" && ln -s "$wheel" "$work/index/simple/torch/"
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/index" >/dev/null 2>&1 &
    server_pid=$!
    export TORCH_INDEX_URL=http://127.0.0.1:$port/simple
}

build() {
    torch_index
    docker build -q --network host --target service -t looptool-service:latest . >/dev/null
    docker build -q --network host --target cpu -t looptool-cpu:latest \
        ${TORCH_INDEX_URL:+--build-arg TORCH_INDEX_URL=$TORCH_INDEX_URL} . >/dev/null
}

world() { # the synthetic world, the demo's service settings for SmolLM2, a one-round run
    compose run --rm -T secrets >/dev/null  # the CLI mounts its identity's directory
    compose run --rm -T --no-deps cli looptool world --out /work/world --train 40 --test 20 --seed 0 >/dev/null
    compose run --rm -T --no-deps cli python -c '
from pathlib import Path
from looptool.app.demo import demo_env
sets = sorted(str(p) for p in Path("/work/world/test").glob("*.json"))
for key, value in demo_env(Path("/models/policy"), sets, Path("/artifacts")).items():
    print(f"{key}={value}")' >"$LOOPTOOL_ENV_FILE"
    cat >"$work/run.toml" <<TOML
[run]
run = "smoke-$(date +%s)"
seed_path = "/work/world/train.jsonl"
rounds = 1
initial_size = 40
round_size = 40
wait_for_eval = true
TOML
}

up() { compose up -d --no-build --wait --wait-timeout 900; }
scale() { compose up -d --no-build --no-recreate --wait --wait-timeout 300 --scale probe=2; }
run_loop() { compose run --rm -T cli looptool run /work/run.toml >"$work/run.log" 2>&1 || { cat "$work/run.log" >&2; exit 1; }; }
synthesize() { # seed data from a tool file, by the synthesizer service (SmolLM2 as generator and judge)
    cat >"$work/tools.json" <<'JSON'
[{"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city.",
  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
JSON
    compose run --rm -T cli looptool synthesize --tools /work/tools.json --out /work/synth.jsonl --count 4 \
        --job "smoke-synth-$(date +%s)" >"$work/synth.log" 2>&1 || { cat "$work/synth.log" >&2; exit 1; }
}
report() { compose run --rm -T cli looptool report "$(sed -n 's/^run = "\(.*\)"/\1/p' "$work/run.toml")" --out /work/report >/dev/null; }

step images base_images
step build build
step models compose --profile tools run --rm -T models >/dev/null
step world world
step up up
step scale scale
step run run_loop
step report report
step synthesize synthesize

probes=$(compose ps -q probe | wc -l)
restarts=$(compose ps -q | xargs docker inspect -f '{{.Name}} {{.RestartCount}}' | awk '$2 > 0')
images=$(docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^looptool-' | sort)
compose logs --no-color >"$work/services.log" 2>&1 || true  # what a failing check shows
python3 - "$work/report/report.json" "$out" "$engine" "$compose_version" "$probes" "$restarts" "$images" "${LOOPTOOL_SMOKE_NETWORK:-host}" "$work/services.log" "$work/synth.log" \
    "$(for k in "${!seconds[@]}"; do echo "$k=${seconds[$k]}"; done)" <<'PY'
import json, sys
report_path, out, engine, compose_version, probes, restarts, images, network, services_log, synth_log, timings = sys.argv[1:]
report = json.load(open(report_path))
(round0,) = report["rounds"]
outcomes = {k: v for k, v in round0["outcomes"].items() if k != "expanded"}
problems = []
if sum(outcomes.values()) != round0["samples"]:
    problems.append(f"round 0: {sum(outcomes.values())} outcomes for {round0['samples']} samples ({outcomes})")
if not report["status"].startswith("completed"):
    problems.append(f"run status: {report['status']}")
if report["errors"] or report["dead_letters"] or report["refused"]:
    problems.append(f"errors {report['errors']}, dead letters {report['dead_letters']}, refused {report['refused']}")
if round0["overall"] is None:
    problems.append("round 0 was not evaluated")
if int(probes) != 2:
    problems.append(f"{probes} probe replicas running, 2 asked for")
if restarts.strip():
    problems.append(f"containers restarted: {restarts.strip()}")
synthesis = open(synth_log).read()
if "finished, 4 attempted" not in synthesis:
    problems.append(f"synthesis job: {synthesis[-500:]}")
result = {
    "what": "scripts/docker/compose-smoke.sh: the cpu profile in containers, SmolLM2-135M-Instruct, one round of 40 samples over the synthetic world, the probe at 2 replicas; then a 4-attempt synthesis job from a tool file by the synthesizer service",
    "command": "bash scripts/docker/compose-smoke.sh" + (f" --out {out}" if out else ""),
    "docker_engine": engine,
    "compose": compose_version,
    "network": network,
    "seconds": {k: int(v) for k, v in (line.split("=") for line in timings.split())},
    "images": dict(line.split() for line in images.splitlines()),
    "run": {"status": report["status"], "samples": round0["samples"], "outcomes": round0["outcomes"],
            "base_overall": report["base_overall"], "overall": round0["overall"]},
    "synthesis": [line for line in synthesis.splitlines() if "finished" in line or "samples;" in line],
    "problems": problems,
}
result["seconds"]["total"] = sum(result["seconds"].values())
text = json.dumps(result, indent=1)
print(text)
if out:
    open(out, "w").write(text + "\n")
if problems:  # the services' own account of what failed
    failed = [line for line in open(services_log, errors="replace") if "handler failed" in line or "dead-lettered" in line]
    print("".join(failed[-20:]) or "no failing handler in the services' logs", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
