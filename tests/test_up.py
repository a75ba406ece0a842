"""`looptool up` / `demo` leave nothing running: on a failure or Ctrl-C inside the topology,
every child it started (services and the embedded nats-server) is stopped."""

from __future__ import annotations

import socket
import urllib.parse
from pathlib import Path

import pytest

from looptool.app.registry import BUILT_IN as SERVICES
from looptool.app.up import Topology


def _listening(url: str) -> bool:
    parts = urllib.parse.urlparse(url)
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((parts.hostname or "127.0.0.1", parts.port or 4222)) == 0


@pytest.mark.parametrize("interruption", [RuntimeError("a failure"), KeyboardInterrupt()])
def test_everything_started_is_stopped(tmp_path: Path, interruption: BaseException) -> None:
    topology = Topology(tmp_path, replicas={name: 1 for name in SERVICES} | {"probe": 2}, quiet=True)
    with pytest.raises(type(interruption)):
        with topology:
            assert topology.nats is not None and _listening(topology.nats.url)
            assert len(topology.processes) == len(SERVICES) + 1
            assert all(p.poll() is None for p in topology.processes.values())
            raise interruption
    assert all(p.poll() is not None for p in topology.processes.values())
    assert topology.nats is not None and not _listening(topology.nats.url)


def test_up_on_a_three_node_cluster_replicates_and_outlives_a_lost_node(tmp_path: Path) -> None:
    import time

    import anyio

    from looptool.kernel import names
    from looptool.kernel.bus import Bus
    from looptool.kernel.nats_server import NatsCluster

    async def replicas(topology: Topology) -> int:
        bus = await Bus.connect(topology.client_settings("admin"))
        try:
            return (await bus.js.stream_info(f"KV_{names.STATE_BUCKET}")).config.num_replicas or 0
        finally:
            await bus.close()

    with Topology(tmp_path, nats_nodes=3, quiet=True) as topology:
        assert isinstance(topology.nats, NatsCluster) and topology.nats_url and topology.nats_url.count(",") == 2
        assert all(topology.service_env(s)["LOOPTOOL_NATS__REPLICAS"] == "3" for s in SERVICES)
        assert anyio.run(replicas, topology) == 3
        topology.nats.nodes[0].kill()
        time.sleep(5)
        assert all(p.poll() is None for p in topology.processes.values())  # every service rode it out
        assert anyio.run(replicas, topology) == 3
    assert all(p.poll() is not None for p in topology.processes.values())
    assert not any(_listening(node.url) for node in topology.nats.nodes)
