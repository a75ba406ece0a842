"""Secure by default, on a real nats-server started as `looptool up` starts it: every identity
has a password, each service only its own rights (derived from what it emits and consumes)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import nats
import nats.errors
import pytest

from looptool.app.cli import resolve_service
from looptool.app.up import SERVICES, Topology, bus_identities
from looptool.kernel import access, names
from looptool.kernel.bus import Bus
from looptool.kernel.credentials import CredentialsError, SecretsDir, read_credentials, tls_hosts_for
from looptool.kernel.errors import PermanentError
from looptool.kernel.events import ArtifactRef, DeadLetter, encode_event
from looptool.kernel.nats_server import NatsServer
from looptool.kernel.runtime import Context
from looptool.kernel.settings import NatsSettings
from looptool.kernel.testing import StubBus
from looptool.loop.events import DatasetReady, JudgeVerdict, ProbeResult

REFUSED_WITHIN = 1.0  # a refused request gets no answer: it times out, and the refusal arrives


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, SecretsDir]]:
    root = tmp_path_factory.mktemp("secured")
    secrets = SecretsDir(root / "secrets")
    with NatsServer(root / "nats", config_file=secrets.ensure(bus_identities())) as server:
        yield server, secrets


@asynccontextmanager
async def connected(secured: tuple[NatsServer, SecretsDir], identity: str) -> AsyncIterator[Bus]:
    server, secrets = secured
    bus = await Bus.connect(
        NatsSettings(url=server.url, credentials_dir=str(secrets.identity(identity)), max_reconnect_attempts=0),
        identity=identity,
    )
    try:
        yield bus
    finally:
        await bus.close()


async def stored(secured: tuple[NatsServer, SecretsDir], subject: str) -> int:
    async with connected(secured, access.ADMIN) as admin:
        return len([item async for item in admin.read(subject)])


def test_secrets_are_private_and_kept_across_starts(tmp_path: Path) -> None:
    secrets = SecretsDir(tmp_path / "secrets")
    config = secrets.ensure(bus_identities())
    first = read_credentials(secrets.identity("probe")).password
    secrets.ensure(bus_identities())
    assert read_credentials(secrets.identity("probe")).password == first  # clients keep working
    assert stat.S_IMODE(secrets.root.stat().st_mode) == 0o700
    files = [p for p in secrets.root.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in secrets.root.rglob("*") if p.is_dir())
    # The server's config holds bcrypt hashes, never a client's password.
    passwords = {read_credentials(secrets.identity(n)).password for n in (*SERVICES, "cli", "admin")}
    assert len(passwords) == len(SERVICES) + 2
    assert not any(password in config.read_text() for password in passwords)


def test_an_unauthenticated_or_wrong_client_is_refused(secured) -> None:
    server, secrets = secured

    async def attempt(**credentials: str) -> None:
        nc = await nats.connect(server.url, allow_reconnect=False, connect_timeout=3, **credentials)
        await nc.close()

    for credentials in ({}, {"user": "probe", "password": "guess"}, {"user": "nobody", "password": "x"}):
        with pytest.raises((nats.errors.Error, OSError)):
            anyio.run(lambda c=credentials: attempt(**c))
    anyio.run(lambda: attempt(user="probe", password=read_credentials(secrets.identity("probe")).password))


def test_a_service_directory_only_serves_its_own_identity(secured) -> None:
    server, secrets = secured
    settings = NatsSettings(url=server.url, credentials_dir=str(secrets.identity("judge")))
    with pytest.raises(CredentialsError, match="'judge'"):
        anyio.run(lambda: Bus.connect(settings, identity="trainer"))


async def assert_refused(bus: Bus, subject: str, data: bytes = b"{}") -> None:
    """The server refuses ``bus``'s publish to ``subject``: a permissions violation arrives
    and no reply does."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    bus.nc._error_cb = on_error  # noqa: SLF001 - a refusal arrives only as an async error
    with pytest.raises(nats.errors.TimeoutError):
        await bus.nc.request(subject, data, timeout=REFUSED_WITHIN)
    expected = f'permissions violation for publish to "{subject}"'.lower()
    with anyio.fail_after(10):
        while not any(expected in str(e).lower() for e in errors):
            await anyio.sleep(0.02)


def test_a_service_publishes_only_the_events_it_emits(secured, run_id) -> None:
    verdict = JudgeVerdict(run=run_id, round=0, sample_id="s1", verdict="prediction_wrong", action="label_ok")
    result = ProbeResult(run=run_id, round=0, sample_id="s1", outcome="mastered", ppl=None)

    async def main() -> None:
        async with connected(secured, "probe") as probe:
            await probe.publish(result)  # its own event: stored
            await assert_refused(probe, names.for_event(verdict), encode_event(verdict))  # another's

    anyio.run(main)
    assert anyio.run(stored, secured, names.for_type(ProbeResult, run_id)) == 1
    assert anyio.run(stored, secured, names.for_type(JudgeVerdict, run_id)) == 0


def test_a_service_reads_only_what_it_consumes(secured) -> None:
    async def main() -> None:
        async with connected(secured, "judge") as judge:
            await judge.js.pull_subscribe(names.for_type(ProbeResult), stream=names.STREAM)  # it consumes these
            consumer = f"$JS.API.CONSUMER.CREATE.{names.STREAM}.spy"
            await assert_refused(judge, f"{consumer}.{names.for_type(DatasetReady)}")
            await assert_refused(judge, f"{consumer}.{names.PREFIX}.>")  # nor the whole log
            await assert_refused(judge, f"$JS.API.CONSUMER.CREATE.{names.STREAM}")  # nor a filter in the body
            # Nor can it listen in on another identity's replies (its fetched messages) or the
            # raw subjects: the server refuses the subscription.
            errors: list[Exception] = []

            async def on_error(exc: Exception) -> None:
                errors.append(exc)

            judge.nc._error_cb = on_error  # noqa: SLF001 - the refusal arrives as an async error
            await judge.nc.subscribe(f"{access.inbox_prefix('probe')}.>")
            await judge.nc.subscribe(f"{names.PREFIX}.>")
            await judge.nc.flush()
            with anyio.fail_after(5):
                while len(errors) < 2:
                    await anyio.sleep(0.05)
            assert all("permissions violation for subscription" in str(e).lower() for e in errors), errors

    anyio.run(main)


@pytest.mark.parametrize("identity", [*SERVICES, "cli"])
def test_no_service_nor_the_cli_can_delete_purge_or_reconfigure_the_log(secured, identity) -> None:
    async def main() -> None:
        async with connected(secured, identity) as bus:
            await bus.js.stream_info(names.STREAM)  # it may look
            for action in ("DELETE", "PURGE", "UPDATE"):
                await assert_refused(bus, f"$JS.API.STREAM.{action}.{names.STREAM}")

    anyio.run(main)
    assert anyio.run(lambda: _stream_exists(secured))


async def _stream_exists(secured) -> bool:
    async with connected(secured, access.ADMIN) as admin:
        return (await admin.js.stream_info(names.STREAM)).config.name == names.STREAM


def test_a_forged_dead_letter_aimed_at_the_jetstream_api_is_not_replayed(secured, run_id) -> None:
    server, secrets = secured
    forged = DeadLetter(
        run=run_id,
        round=0,
        service="probe",
        subject=f"$JS.API.STREAM.DELETE.{names.STREAM}",
        stream_seq=1,
        num_delivered=5,
        error="forged",
        data=b"{}",
    )

    async def plant() -> None:
        async with connected(secured, "cli") as cli:
            await cli.publish(forged)

    anyio.run(plant)
    replay = subprocess.run(
        [sys.executable, "-m", "looptool", "dlq", run_id, "--replay"],
        env={
            **os.environ,
            "LOOPTOOL_NATS__URL": server.url,
            "LOOPTOOL_NATS__CREDENTIALS_DIR": str(secrets.identity("cli")),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "$JS.API.STREAM.DELETE" in replay.stdout + replay.stderr  # named as refused
    assert anyio.run(lambda: _stream_exists(secured))


@pytest.mark.parametrize("certificate", ["generated", "the user's own"])
def test_beyond_loopback_the_bus_speaks_tls(tmp_path: Path, certificate: str) -> None:
    secrets = SecretsDir(tmp_path / "secrets")
    if certificate == "generated":
        config = secrets.ensure(bus_identities(), tls_hosts=["localhost", "127.0.0.1"])
    else:  # issued by some other CA (here: another secrets directory's)
        issuer = SecretsDir(tmp_path / "issuer")
        issuer.ensure({}, tls_hosts=["127.0.0.1"])
        tls = issuer.root / "server" / "tls"
        own = (str(tls / "server.pem"), str(tls / "server-key.pem"), str(issuer.root / "ca" / "ca.pem"))
        config = secrets.ensure(bus_identities(), own_tls=own)
        assert (secrets.identity("probe") / "ca.pem").read_bytes() == Path(own[2]).read_bytes()
    probe = secrets.identity("probe")
    assert (probe / "ca.pem").exists()

    async def main(url: str) -> None:
        bus = await Bus.connect(NatsSettings(url=url, credentials_dir=str(probe)), identity="probe")
        assert bus.nc._server_info.get("tls_required") is True  # noqa: SLF001 - what the server announced
        await bus.close()
        with pytest.raises((nats.errors.Error, OSError)):  # a client without TLS is refused
            password = read_credentials(probe).password
            nc = await nats.connect(url, user="probe", password=password, allow_reconnect=False, connect_timeout=3)
            await nc.close()

    with NatsServer(tmp_path / "nats", config_file=config) as server:
        anyio.run(main, server.url)


def test_an_artifact_reference_outside_the_bucket_is_refused(secured) -> None:
    async def main() -> None:
        async with connected(secured, "trainer") as bus:
            with pytest.raises(PermanentError, match="not in bucket"):
                await bus.get_artifact(ArtifactRef(bucket="someone-elses", name="r/r0/dataset.jsonl"))

    anyio.run(main)


def test_a_service_publishing_an_event_it_does_not_declare_fails_by_name() -> None:
    judge = resolve_service("judge")
    assert judge.emits == {JudgeVerdict}
    ctx = Context(StubBus(), None, judge.name, "judge-0", None, judge.emits)
    with pytest.raises(PermanentError, match="publishes dataset.ready, which it does not declare"):
        anyio.run(ctx.publish, DatasetReady(run="r", round=0, dataset=ArtifactRef(bucket="b", name="n"), size=1))
    anyio.run(ctx.publish, JudgeVerdict(run="r", round=0, sample_id="s", verdict="unclear", action="label_ok"))


def test_up_secures_the_bus_it_starts(tmp_path: Path) -> None:
    with Topology(tmp_path, replicas=dict.fromkeys(SERVICES, 0), quiet=True) as topology:
        env = topology.service_env("probe")
        assert env["LOOPTOOL_NATS__CREDENTIALS_DIR"] == str(tmp_path.resolve() / "secrets" / "probe")

        async def main() -> None:
            bus = await Bus.connect(topology.client_settings())  # the CLI's identity
            await bus.close()
            with pytest.raises((nats.errors.Error, OSError)):
                nc = await nats.connect(topology.nats_url, allow_reconnect=False, connect_timeout=3)
                await nc.close()

        anyio.run(main)


def test_tls_is_for_servers_bound_beyond_loopback() -> None:
    assert tls_hosts_for("127.0.0.1") == [] and tls_hosts_for("localhost") == [] and tls_hosts_for("::1") == []
    assert {"localhost", "127.0.0.1", socket.gethostname()} <= set(tls_hosts_for("0.0.0.0"))
    assert "10.1.2.3" in tls_hosts_for("10.1.2.3") and "0.0.0.0" not in tls_hosts_for("0.0.0.0")


def test_a_service_reads_an_artifact_large_enough_for_flow_control(secured, run_id) -> None:
    """Object reads are an ordered push consumer: past a few MB the server asks for flow-control
    replies (``$JS.FC.…``), and a service refused them stalled for good on a paper-size seed
    pool (found by bench/paper_scale.py: the curator never published round 0)."""
    data = os.urandom(24 * 1024 * 1024)

    async def main() -> bytes:
        async with connected(secured, "trainer") as trainer:
            ref = await trainer.put_artifact(f"{run_id}/r0/big", data)
        async with connected(secured, "curator") as curator:
            with anyio.fail_after(60):
                return await curator.get_artifact(ref)

    assert anyio.run(main) == data
