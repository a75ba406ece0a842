"""A three-node JetStream cluster (real nats-server processes) that loses a node mid-round."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
import toy_service
from helpers import make_settings, read_all, running, wait_for
from test_runtime import tasks

from looptool.kernel import names
from looptool.kernel.bus import Bus
from looptool.kernel.nats_server import NatsCluster
from looptool.loop.events import ProbeResult


@pytest.fixture
def cluster(tmp_path: Path):
    with NatsCluster(tmp_path / "cluster", size=3) as started:
        yield started


async def _handled_at_least(n: int) -> bool:
    # Counted in process: polling the log would create a consumer per poll on a 3-node cluster.
    return len({sample for _, sample in toy_service.handled}) >= n


def test_a_round_completes_when_the_stream_leader_is_killed(cluster: NatsCluster, run_id: str) -> None:
    settings = make_settings(cluster.url)
    settings.nats.replicas = 3
    toy_service.handled.clear()

    async def main() -> tuple[list[ProbeResult], bytes, str | None, int]:
        async with running(toy_service.echo, settings, replicas=2):
            bus = await Bus.connect(settings.nats)
            info = await bus.js.stream_info(names.STREAM)
            ref = await bus.put_artifact(f"{run_id}/before.bin", b"x" * 300_000)
            await bus.put_value(f"mark.{run_id}", "before")
            await bus.publish_many(tasks(run_id, 60)[:30])
            await wait_for(lambda: _handled_at_least(10), timeout=120, interval=0.5)
            leader = info.cluster.leader if info.cluster else None
            victim = next(node for node in cluster.nodes if node.cluster and node.cluster.server_name == leader)
            victim.kill()  # mid-round, the stream's leader
            await bus.publish_many(tasks(run_id, 60)[30:])
            await wait_for(lambda: _handled_at_least(60), timeout=300, interval=0.5)
        results = await read_all(bus, run_id, ProbeResult)
        artifact = await bus.get_artifact(ref)
        mark = await bus.value(f"mark.{run_id}")
        replicas = info.config.num_replicas or 0
        await bus.close()
        return results, artifact, mark, replicas

    results, artifact, mark, replicas = anyio.run(main)
    assert replicas == 3
    assert sorted(r.sample_id for r in results) == [f"s-{i:05d}" for i in range(60)]  # each once
    assert artifact == b"x" * 300_000 and mark == "before"  # the object store and KV survived too


def test_a_client_with_default_settings_never_scales_the_cluster_down(cluster: NatsCluster) -> None:
    async def main() -> list[int]:
        replicated = make_settings(cluster.url)
        replicated.nats.replicas = 3
        first = await Bus.connect(replicated.nats)
        plain = await Bus.connect(make_settings(cluster.url).nats)  # replicas=1, e.g. the CLI
        copies = [
            (await plain.js.stream_info(name)).config.num_replicas or 0
            for name in (names.STREAM, f"KV_{names.STATE_BUCKET}", f"OBJ_{names.ARTIFACT_BUCKET}")
        ]
        await plain.put_value("k", "v")
        assert await first.value("k") == "v"
        await first.close()
        await plain.close()
        return copies

    assert anyio.run(main) == [3, 3, 3]
