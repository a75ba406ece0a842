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
import msgspec
import nats
import nats.errors
import pytest
from helpers import assert_refused

from looptool.app.registry import BUILT_IN as SERVICES
from looptool.app.registry import resolve as resolve_service
from looptool.app.runs import fold_run
from looptool.app.up import Topology, bus_identities
from looptool.data.samples import Message, Sample
from looptool.kernel import access, names
from looptool.kernel.bus import Bus
from looptool.kernel.credentials import CredentialsError, SecretsDir, read_credentials, tls_hosts_for
from looptool.kernel.errors import PermanentError
from looptool.kernel.events import ArtifactRef, DeadLetter, ServiceError, encode_event
from looptool.kernel.nats_server import NatsServer
from looptool.kernel.runtime import Context
from looptool.kernel.settings import NatsSettings
from looptool.kernel.testing import StubBus
from looptool.loop.events import DatasetReady, JudgeVerdict, ProbeResult, ProbeTask, RunFinished, RunRequested
from looptool.loop.runconfig import RunConfig


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


def test_a_mount_that_shows_every_identity_is_refused_as_an_ignored_subpath(tmp_path: Path) -> None:
    # Docker Engine before 26 ignores a volume's subpath: the container gets the secrets root.
    secrets = SecretsDir(tmp_path / "secrets")
    secrets.ensure(bus_identities())
    with pytest.raises(CredentialsError, match="subpath was not applied.*Docker Engine 26"):
        read_credentials(secrets.root)
    with pytest.raises(CredentialsError, match="not a LoopTool credentials directory"):
        read_credentials(tmp_path)


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
            own = names.consumer_name("judge", ProbeResult)  # it consumes these, on its own durable
            await judge.ensure_consumer(own, names.for_type(ProbeResult), ack_wait=30, max_deliver=5)
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


def _replay(secured, run: str) -> subprocess.CompletedProcess[str]:
    server, secrets = secured
    return subprocess.run(
        [sys.executable, "-m", "looptool", "dlq", run, "--replay"],
        env={
            **os.environ,
            "LOOPTOOL_NATS__URL": server.url,
            "LOOPTOOL_NATS__CREDENTIALS_DIR": str(secrets.identity("cli")),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_replay_checks_each_letter_as_its_service_would_and_goes_on_past_a_bad_one(secured, run_id) -> None:
    """``dlq --replay`` crashed on the letter of a claim-checked event and left the letters after
    it; it republished a probe's letter carrying ``run.finished`` (#28)."""
    big = ProbeTask(
        run=run_id,
        sample=Sample(id="s-big", tools=[], messages=[Message(role="user", content="x" * 1_500_000)]),
        model="m",
    )
    finished = RunFinished(run=run_id, reason="FORGED by probe")
    letters = [
        _letter(run_id, "probe", data=b"\xff garbage", sample_id=None, stage=""),
        _letter(run_id, "probe", subject=names.for_event(finished), data=encode_event(finished), stream_seq=2),
        _letter(run_id, "probe", data=encode_event(big), sample_id="s-big", stream_seq=3),
    ]

    async def plant() -> None:
        async with connected(secured, "probe") as probe:
            for letter in letters:
                await probe.publish(letter)

    anyio.run(plant)
    replay = _replay(secured, run_id)
    assert replay.returncode == 0, replay.stderr
    rows = [msgspec.json.decode(line) for line in replay.stdout.splitlines()]
    assert [("replayed_as" in row, row.get("not_replayed", "")[:40]) for row in rows] == [
        (False, "undecodable event: JSON is malformed: in"),
        (False, "service probe does not consume run.finis"),
        (True, ""),
    ]
    assert "3 dead letter(s) in run" in replay.stderr and "replayed 1, refused 2, failed 0" in replay.stderr

    async def stored_events() -> list[object]:
        async with connected(secured, access.ADMIN) as admin:
            return [e async for e in admin.events(names.run_filter(run_id)) if not isinstance(e, DeadLetter)]

    assert anyio.run(stored_events) == [big]


def test_a_forged_dead_letter_aimed_at_the_jetstream_api_is_not_replayed(secured, run_id) -> None:
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

    async def plant() -> None:  # a letter in the probe's own name: only the probe could file it
        async with connected(secured, "probe") as probe:
            await probe.publish(forged)

    anyio.run(plant)
    replay = _replay(secured, run_id)
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


# --------------------------------------------------------------------------- consumers are their owners'


def _consumer_api(name: str, filter_subject: str) -> list[str]:
    """Every way to take from, look at, remove or re-point the durable consumer ``name``."""
    api, stream = "$JS.API.CONSUMER", names.STREAM
    return [
        f"{api}.MSG.NEXT.{stream}.{name}",
        f"{api}.INFO.{stream}.{name}",
        f"{api}.DELETE.{stream}.{name}",
        f"{api}.CREATE.{stream}.{name}.{filter_subject}",  # the same filter: an update
        f"{api}.CREATE.{stream}.{name}.{names.PREFIX}.nothing.matches",  # starve it
        f"{api}.CREATE.{stream}.{name}",  # the filter in the body
        f"{api}.DURABLE.CREATE.{stream}.{name}",
        f"$JS.ACK.{stream}.{name}.1.1.1.1700000000000000000.0",
    ]


@pytest.mark.parametrize("identity", ["probe", "judge", "curator", "cli"])
def test_no_identity_can_take_inspect_delete_or_repoint_the_trainers_consumer(secured, run_id, identity) -> None:
    """The probe pulled ``dataset.ready`` from the trainer's consumer and acked it: the run hung
    at round 0 for good (#28). Every identity but the trainer is refused every consumer request
    and ack on it, and the work is still there for the trainer."""
    name, filter_subject = names.consumer_name("trainer", DatasetReady), names.for_type(DatasetReady)
    ready = DatasetReady(run=run_id, dataset=ArtifactRef(bucket=names.ARTIFACT_BUCKET, name="x"), size=1)

    async def main() -> None:
        async with connected(secured, "trainer") as trainer:
            await trainer.ensure_consumer(name, filter_subject, ack_wait=30, max_deliver=5)
        async with connected(secured, "curator") as curator:
            await curator.publish(ready)
        async with connected(secured, identity) as thief:
            for subject in _consumer_api(name, filter_subject):
                await assert_refused(thief, subject)
        async with connected(secured, "trainer") as trainer:
            info = await trainer.js.consumer_info(names.STREAM, name)
            assert info.config.filter_subject == filter_subject
            sub = await trainer.pull(name)
            fetched = [await trainer.decode(m) for m in await sub.fetch(100, timeout=5)]
            assert ready in fetched

    anyio.run(main)


def test_a_service_keeps_its_own_durables_filter(secured) -> None:
    """The expander may read ``dataset.ready`` through consumers of its own, but not by
    re-pointing its durable on verdicts at them."""
    name = names.consumer_name("expander", JudgeVerdict)

    async def main() -> None:
        async with connected(secured, "expander") as expander:
            await expander.ensure_consumer(name, names.for_type(JudgeVerdict), ack_wait=30, max_deliver=5)
            await assert_refused(
                expander, f"$JS.API.CONSUMER.CREATE.{names.STREAM}.{name}.{names.for_type(DatasetReady)}"
            )
            await assert_refused(expander, f"$JS.API.CONSUMER.DELETE.{names.STREAM}.{name}")
            assert [e async for e in expander.events(names.for_type(DatasetReady, "nosuchrun"))] == []  # it may read

    anyio.run(main)


# --------------------------------------------------------------------------- reports filed in one's own name


def _letter(run: str, service: str, **fields: object) -> DeadLetter:
    values: dict[str, object] = {
        "subject": names.for_type(ProbeTask, run), "stream_seq": 1, "num_delivered": 5, "error": "forged",
        "data": b"{}", "stage": "probe.task", "sample_id": "made-up",
    } | fields  # fmt: skip
    return DeadLetter(run=run, service=service, **values)  # type: ignore[arg-type]


def test_no_identity_files_a_dead_letter_or_an_error_in_anothers_name(secured, run_id) -> None:
    """The judge published 160 letters "from the probe" and closed round 0 at once (#28)."""

    async def main() -> None:
        async with connected(secured, "judge") as judge:
            await judge.publish(_letter(run_id, "judge", stage="probe.result"))  # its own: stored
            for forged in (_letter(run_id, "probe"), ServiceError(run=run_id, service="probe", replica="x", error="e")):
                await assert_refused(judge, names.for_event(forged), encode_event(forged))
        async with connected(secured, "cli") as cli:
            for forged in (_letter(run_id, "probe"), _letter(run_id, "cli")):
                await assert_refused(cli, names.for_event(forged), encode_event(forged))

    anyio.run(main)
    assert anyio.run(stored, secured, names.for_type(DeadLetter, run_id)) == 1


def test_a_letter_on_its_senders_subject_naming_another_sender_is_not_believed(secured, run_id) -> None:
    """The judge may file letters on its own subject; one that names the probe inside is not
    counted by any fold (the services' runtime and the operator's views ask the same check)."""
    forged = _letter(run_id, "probe")
    own_subject = names.for_type(DeadLetter, run_id, sender="judge")
    config = RunConfig(run=run_id, rounds=1, seed_data=ArtifactRef(bucket=names.ARTIFACT_BUCKET, name="s"))

    async def main() -> None:
        async with connected(secured, "cli") as cli:
            await cli.publish(RunRequested(run=run_id, config=config))
        async with connected(secured, "curator") as curator:
            ref = ArtifactRef(bucket=names.ARTIFACT_BUCKET, name="d")
            await curator.publish(DatasetReady(run=run_id, dataset=ref, size=1, sample_ids=["real"]))
        async with connected(secured, "judge") as judge:
            await judge.publish_raw(own_subject, encode_event(forged), msg_id="forged-1")
        assert names.misfiled(own_subject, forged) is not None
        async with connected(secured, "cli") as cli:
            ledger = await fold_run(cli, run_id)
        assert ledger.dead_letters == 0 and ledger.round(0).missing() == {"probe": 1}

    anyio.run(main)
