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
from looptool.loop.events import ProbeResult, ProbeTask


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


def test_a_publish_whose_id_is_still_being_stored_is_tried_again(settings, run_id: str) -> None:
    """On a cluster (D9 of #30), a leader still storing an earlier copy of a message id answers
    409 / 10158, "duplicate message id is in process". No server can be driven into that answer on
    demand, so the real server's publish is preceded by that answer once, as the server words it;
    the event is then stored once, single and batched."""
    from nats.js.errors import APIError

    async def main() -> tuple[list[ProbeTask], int]:
        bus = await Bus.connect(settings.nats)
        real_publish, real_async = bus.js.publish, bus.js.publish_async
        refused: list[str] = []

        def in_process() -> APIError:
            return APIError(code=409, err_code=10158, description="duplicate message id is in process")

        async def publish(subject: str, *args, **kwargs):
            if subject not in refused:
                refused.append(subject)
                raise in_process()
            return await real_publish(subject, *args, **kwargs)

        async def publish_async(subject: str, *args, **kwargs):
            future = await real_async(subject, *args, **kwargs)
            if len(refused) < 2:  # the first batched ack answers 10158; its message is stored anyway
                refused.append(subject)
                answered = anyio.Event()
                future.add_done_callback(lambda _: answered.set())
                await answered.wait()
                future = future.get_loop().create_future()
                future.set_exception(in_process())
            return future

        bus.js.publish, bus.js.publish_async = publish, publish_async  # type: ignore[method-assign]
        # nats-py's own API errors carry no err_code: they pass through as themselves.
        assert await bus.value(f"{run_id}.absent") is None
        single = await bus.publish(tasks(run_id, 3)[0])
        batch = await bus.publish_many(tasks(run_id, 3)[1:])
        results = await read_all(bus, run_id, ProbeTask)
        await bus.close()
        assert not single.duplicate and [bool(a.duplicate) for a in batch] == [True, False]
        return results, len(refused)

    results, refusals = anyio.run(main)
    assert refusals == 2
    assert sorted(r.sample.id for r in results) == ["s-00000", "s-00001", "s-00002"]
