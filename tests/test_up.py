"""`looptool up` / `demo` leave nothing running: on a failure or Ctrl-C inside the topology,
every child it started (services and the embedded nats-server) is stopped."""

from __future__ import annotations

import socket
import urllib.parse
from pathlib import Path

import pytest

from looptool.app.up import SERVICES, Topology


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
