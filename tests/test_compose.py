"""compose.yaml is checked structurally (no Docker engine here): every service present, each
command a real CLI entry point, every LOOPTOOL_* variable a real, valid setting."""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

from looptool.app.cli import build_parser
from looptool.app.up import SERVICES
from looptool.loop.settings import load_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def _interpolate(value: str) -> str:
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)  # ${VAR:-default} -> default


def test_every_service_is_a_container(compose) -> None:
    assert set(SERVICES) | {"nats", "vllm", "vllm-cpu"} <= set(compose["services"])
    registered = {ep.name for ep in entry_points(group="looptool.services")}
    assert set(SERVICES) <= registered


def test_service_commands_resolve_to_cli_entry_points(compose) -> None:
    parser = build_parser()
    registered = {ep.name for ep in entry_points(group="looptool.services")}
    for name in SERVICES:
        command = compose["services"][name]["command"]
        assert command[:2] == ["looptool", "serve"], name
        args = parser.parse_args(command[1:])
        assert args.service in registered and args.service == name
        # Scalable: no fixed container name or host port that two replicas would fight over.
        assert "container_name" not in compose["services"][name] and "ports" not in compose["services"][name]


def test_no_port_is_published_beyond_loopback(compose) -> None:
    published = [(name, str(p)) for name, svc in compose["services"].items() for p in svc.get("ports", [])]
    assert published  # the bus is reachable from the host, for `looptool run` and `watch`
    for name, port in published:
        assert port.startswith("127.0.0.1:"), (name, port)
    assert not any(port.endswith(":8222") for _, port in published)


def test_environment_decodes_as_settings(compose) -> None:
    for name in SERVICES:
        env = {key: _interpolate(str(value)) for key, value in compose["services"][name]["environment"].items()}
        settings = load_settings(environ=env)
        assert settings.nats.url == "nats://nats:4222"
        assert settings.artifact_dir == "/artifacts"


def _identity_mount(service: dict) -> dict:
    (mount,) = [v for v in service.get("volumes", []) if isinstance(v, dict) and v.get("source") == "secrets"]
    return mount


def test_each_container_mounts_only_its_own_credentials(compose) -> None:
    for name in [*SERVICES, "cli"]:
        service = compose["services"][name]
        mount = _identity_mount(service)
        assert mount["volume"]["subpath"] == name and mount["read_only"] is True, name
        settings = load_settings(environ={k: _interpolate(str(v)) for k, v in service["environment"].items()})
        assert settings.nats.credentials_dir == mount["target"], name
        for endpoint in (settings.model, settings.judge_model, settings.generator_model):
            assert endpoint.api_key_file == f"{mount['target']}/vllm-api-key", name
    for name in ("vllm", "vllm-cpu"):  # the model servers see the key and nothing of the bus
        assert _identity_mount(compose["services"][name])["volume"]["subpath"] == "vllm"
        assert "VLLM_API_KEY" in " ".join(compose["services"][name]["entrypoint"])


def test_nats_runs_with_the_generated_users_and_tls(compose) -> None:
    secrets, nats = compose["services"]["secrets"], compose["services"]["nats"]
    args = build_parser().parse_args(secrets["command"][1:])
    assert args.func.__name__ == "cmd_secrets" and "nats" in args.tls_host  # the name services dial
    mount = _identity_mount(nats)
    assert mount["volume"]["subpath"] == "server" and args.server_root == mount["target"]
    assert nats["command"][:2] == ["-c", f"{mount['target']}/nats.conf"]
    assert nats["depends_on"]["secrets"]["condition"] == "service_completed_successfully"


def test_nats_is_jetstream_with_a_volume_and_health_check(compose) -> None:
    nats = compose["services"]["nats"]
    assert "-js" in nats["command"] and "/data" in nats["command"]
    assert any(v.startswith("nats:") for v in nats["volumes"]) and "nats" in compose["volumes"]
    assert "healthcheck" in nats


def test_vllm_serves_runtime_lora_on_gpu_and_cpu(compose) -> None:
    for name in ("vllm", "vllm-cpu"):
        service = compose["services"][name]
        command = " ".join(service["command"])
        assert "--enable-lora" in command and "--tool-call-parser" in command
        assert service["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "true"
        assert "healthcheck" in service
    assert compose["services"]["vllm"]["profiles"] == ["gpu"] and compose["services"]["vllm-cpu"]["profiles"] == ["cpu"]
    assert compose["services"]["vllm-cpu"]["networks"]["default"]["aliases"] == ["vllm"]
    # Adapters are loaded by path: the trainer writes where vLLM reads.
    assert any("artifacts:/artifacts" in v for v in compose["services"]["vllm"]["volumes"])
    assert any(v.startswith("artifacts:/artifacts") for v in compose["services"]["trainer"]["volumes"])


def test_dockerfile_installs_the_project() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    copied = {src for line in dockerfile.splitlines() if line.startswith("COPY ") for src in line.split()[1:-1]}
    assert {"looptool", "pyproject.toml", "README.md"} <= copied  # the package and what pip builds it from
    install = next(i for i in dockerfile.replace("\\\n", " ").splitlines() if "pip install" in i)
    # A failed install must fail the build: an unbracketed `|| true` would swallow it.
    assert re.sub(r"\([^)]*\)", "", install).count("||") == 0, install


def test_cluster_override_makes_three_routed_nodes_and_replicated_services(compose) -> None:
    cluster = yaml.safe_load((REPO / "compose.cluster.yaml").read_text())
    nodes = {name: cluster["services"][name] for name in ("nats", "nats-b", "nats-c")}
    names = {}
    for name, node in nodes.items():
        command = node["command"]
        assert command[:2] == compose["services"]["nats"]["command"][:2]  # the generated users and TLS
        names[name] = command[command.index("--server_name") + 1]
        routes = command[command.index("--routes") + 1].split(",")
        assert sorted(route.split("//")[1].split(":")[0] for route in routes) == sorted(set(nodes) - {name})
        assert command[command.index("--cluster_name") + 1] == "looptool"
    assert len(set(names.values())) == 3
    secrets = build_parser().parse_args(cluster["services"]["secrets"]["command"][1:])
    assert set(nodes) <= set(secrets.tls_host)  # certificates valid for every node a client dials
    for name in [*SERVICES, "cli"]:
        env = cluster["services"][name]["environment"]
        settings = load_settings(environ=env)
        assert settings.nats.replicas == 3
        assert sorted(u.split("//")[1].split(":")[0] for u in settings.nats.url.split(",")) == sorted(nodes)
    assert {"nats-b", "nats-c"} <= set(cluster["volumes"])
