"""Synthesis on the bus: how a job's rate grows with synthesizer replicas, and that the pool
does not change with them.

    .venv/bin/python bench/synthesis_replicas.py --count 40 --replicas 1 2 4 \\
        --out bench/results/synthesis_replicas.json

For each replica count, side by side in one run: a secure embedded NATS, that many synthesizer
processes (``runtime.concurrency`` each), and one job of ``--count`` attempts over a real MCP
server's tools (``tests/mcp_weather_server.py``; every call runs, each attempt in a fresh
session). The generator is the tests' scripted one served over HTTP with ``--latency`` seconds
per request — a stand-in for a model server, so that the number measures the service's sharing
of the work, not a model. Writes attempts per second, the speed-up over one replica, and
whether every replica count settled to the same pool.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from scripted_openai import ScriptedServer  # noqa: E402
from test_synthesis import SERVER, varied_generator  # noqa: E402

from looptool.app import registry  # noqa: E402
from looptool.app.seeding import request_synthesis  # noqa: E402
from looptool.app.up import Topology  # noqa: E402
from looptool.app.watch import watch_synthesis  # noqa: E402
from looptool.kernel.bus import Bus  # noqa: E402

SOURCE = f"mcp:{SERVER}"


def one(replicas: int, args: argparse.Namespace, generator_url: str, workdir: Path) -> dict[str, object]:
    env = {
        "LOOPTOOL_GENERATOR_MODEL__BASE_URL": generator_url,
        "LOOPTOOL_SYNTHESIS__CATEGORIES": '{"simple": 0.7, "multi_turn": 0.2, "irrelevance": 0.1}',
        "LOOPTOOL_SYNTHESIS__SEMANTICS": "false",
        "LOOPTOOL_SYNTHESIS__ALLOW_EXECUTION": msgspec.json.encode([SOURCE]).decode(),
        "LOOPTOOL_RUNTIME__CONCURRENCY": str(args.concurrency),
        "LOOPTOOL_LOG__LEVEL": "warning",
    }
    counts = dict.fromkeys(registry.service_names(), 0) | {"synthesizer": replicas}
    with Topology(workdir, replicas=counts, env=env, quiet=True) as topology:

        async def job() -> tuple[float, object]:
            bus = await Bus.connect(topology.client_settings(), name="bench")
            try:
                started = time.perf_counter()
                await request_synthesis(bus, "bench", SOURCE, args.count, args.seed)
                ledger = await watch_synthesis(bus, "bench", interval=30.0)
                seconds = time.perf_counter() - started
                assert ledger.finished is not None
                return seconds, await bus.get_artifact(ledger.finished.pool), ledger.finished
            finally:
                await bus.close()

        seconds, pool, finished = anyio.run(job)
    return {
        "replicas": replicas,
        "seconds": round(seconds, 1),
        "attempts_per_second": round(args.count / seconds, 3),
        "kept": finished.kept,  # type: ignore[attr-defined]
        "rejected": finished.rejected,  # type: ignore[attr-defined]
        "pool": pool,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--concurrency", type=int, default=2, help="runtime.concurrency of each replica")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds the scripted generator takes a request")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    rows = []
    with ScriptedServer(varied_generator().answer, delay=args.latency) as generator:
        for replicas in args.replicas:
            with tempfile.TemporaryDirectory() as workdir:
                rows.append(one(replicas, args, generator.base_url, Path(workdir)))
            print(f"{replicas} replica(s): {rows[-1]['attempts_per_second']} attempts/s", file=sys.stderr)
    base = rows[0]["attempts_per_second"]
    pools = {row.pop("pool") for row in rows}  # type: ignore[arg-type]
    report = {
        "command": "python bench/synthesis_replicas.py " + " ".join(sys.argv[1:]),
        "settings": vars(args) | {"out": None},
        "rows": [row | {"speedup": round(row["attempts_per_second"] / base, 2)} for row in rows],  # type: ignore[operator]
        "same_pool_for_every_replica_count": len(pools) == 1,
    }
    text = msgspec.json.format(msgspec.json.encode(report)).decode()
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
