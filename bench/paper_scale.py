"""The paper-size run on one machine: rounds of 18,304 samples, every service, against a load
server, and how its cost grows at 2× and 4× the size.

    .venv/bin/python bench/paper_scale.py --size 18304 --scales 1 2 4 --out bench/results/paper_scale.json

Per scale: a rich synthetic world of ``size × scale`` samples a round (the seed pool 1.6 times
that, 10% label noise), ``looptool up``'s topology with probe, judge, expander, evaluator and
curator at ``--replicas`` each and one trainer, the model endpoints pointed at
``bench/load_server.py`` (fixed latency, a quarter of the answers corrupted), and one run of
``--rounds`` rounds. The trainer trains for real (TRL + PEFT) on a tiny random model, one step a
round: its data preparation still sees every sample. The expander writes with the world's
generator (the load server writes no samples).

Measured per round, from the event log's own timestamps and the load server's clock:

- wall time, and its parts: training (``dataset.ready`` → ``model.ready``), work (→ the round's
  last result), closing (last result → the next ``dataset.ready``: the curator's Eq. 5 and
  dataset upload);
- **overhead outside model time**: the share of the round in which neither the trainer trained
  (``train_seconds``) nor the load server had a request in flight; and the same share of the
  round after ``model.ready`` (the trainer's data preparation left out);
- events/s through the bus, event-log bytes per sample, peak memory (VmHWM) per process;
- work done twice: model calls beyond one per probed sample and evaluated item, and judge calls
  beyond what the verdicts report;
- after the run, the time a restarted curator takes to rebuild its ledgers from the log.

With ``--faults``: kill -9 of a probe, a judge and a curator replica (each restarted) a fifth
into round 0's results, and a NATS restart a fifth into round 1's — the work done twice then
is what the faults cost at the model.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load_server import LoadServer, serve  # noqa: E402

from looptool.app.runs import submit_run  # noqa: E402
from looptool.app.up import MODEL_SECTIONS, Topology  # noqa: E402
from looptool.data.formats import read_samples  # noqa: E402
from looptool.data.samples import Sample  # noqa: E402
from looptool.data.worlds.synthetic import build, write  # noqa: E402
from looptool.kernel import access, names  # noqa: E402
from looptool.kernel.bus import Bus  # noqa: E402
from looptool.kernel.nats_server import free_port  # noqa: E402
from looptool.llm.tiny_model import build_tiny_model  # noqa: E402
from looptool.loop.evaluation import load_eval_sets  # noqa: E402
from looptool.loop.events import (  # noqa: E402
    EvalCompleted,
    ExpandResult,
    JudgeVerdict,
    ModelReady,
    ProbeResult,
    RunFinished,
)
from looptool.loop.runconfig import PplCut, RunConfig  # noqa: E402

RESULTS = (ProbeResult, JudgeVerdict, ExpandResult, EvalCompleted)
SCALED = ("probe", "judge", "expander", "evaluator", "curator")


def service_env(base_url: str, model_dir: Path, test_sets: list[str], artifacts: Path) -> dict[str, str]:
    env = {f"LOOPTOOL_{section}__BASE_URL": base_url for section in MODEL_SECTIONS}
    return env | {
        "LOOPTOOL_TRAINER__BASE_MODEL": str(model_dir),
        "LOOPTOOL_TRAINER__USE_CPU": "true",
        "LOOPTOOL_TRAINER__MAX_STEPS": "1",
        "LOOPTOOL_TRAINER__BATCH_SIZE": "4",
        "LOOPTOOL_TRAINER__CHECKPOINT_STEPS": "0",
        "LOOPTOOL_TRAINER__LOGGING_STEPS": "1",
        "LOOPTOOL_EVALUATOR__SETS": msgspec.json.encode(test_sets).decode(),
        "LOOPTOOL_JUDGE__MODE": "cascade",
        "LOOPTOOL_JUDGE__VOTES": "3",
        "LOOPTOOL_EXPANDER__MODE": "world",
        "LOOPTOOL_EXPANDER__WORLD_CATALOGUE": "rich",
        "LOOPTOOL_EXPANDER__K": "3",
        "LOOPTOOL_RUNTIME__CONCURRENCY": "32",
        "LOOPTOOL_ARTIFACT_DIR": str(artifacts),
        "LOOPTOOL_LOG__LEVEL": "warning",
    }


class Observer:
    """Follows the run's events: timestamps per round, counts, and the expansions' labels for
    the load server (an expansion is probed in the next round, after its round closed)."""

    def __init__(self, server: LoadServer) -> None:
        self.server = server
        self.events: Counter[str] = Counter()
        self.first: dict[tuple[str, int], float] = {}
        self.last: dict[tuple[str, int], float] = {}
        self.train_seconds: dict[int, float] = {}
        self.judge_llm_calls = 0
        self.probed: Counter[int] = Counter()
        self.eval_items = 0
        self.finished: RunFinished | None = None

    def see(self, stamp: float, event: Any) -> None:
        tag = type(event).__name__
        self.events[tag] += 1
        key = (tag, event.round)
        self.first.setdefault(key, stamp)
        self.last[key] = max(self.last.get(key, stamp), stamp)
        if isinstance(event, ExpandResult):
            self.server.register(event.samples)
        elif isinstance(event, JudgeVerdict):
            self.judge_llm_calls += event.llm_calls
            if event.action == "label_fixed" and event.sample is not None:
                self.server.register([event.sample])
        elif isinstance(event, ProbeResult):
            self.probed[event.round] += 1
        elif isinstance(event, ModelReady):
            self.train_seconds[event.round] = event.train_seconds
        elif isinstance(event, EvalCompleted):
            self.eval_items += event.n_items
        elif isinstance(event, RunFinished):
            self.finished = event

    def rounds(self, rounds: int, busy: list[tuple[float, float]]) -> list[dict[str, float]]:
        out = []
        for r in range(rounds):
            start = self.first[("DatasetReady", r)]
            ready = self.first[("ModelReady", r)]
            last_result = max(self.last.get((t.__name__, r), ready) for t in RESULTS)
            end = self.first.get(("DatasetReady", r + 1)) or self.last[("RunFinished", r)]
            wall = end - start
            model_busy = overlap(busy, ready, end)
            out.append(
                {
                    "round": r,
                    "samples": self.probed[r],
                    "wall_s": round(wall, 2),
                    "train_s": round(ready - start, 2),
                    "train_seconds_reported": round(self.train_seconds.get(r, 0.0), 2),
                    "work_s": round(last_result - ready, 2),
                    "close_s": round(end - last_result, 3),
                    "model_busy_s": round(model_busy, 2),
                    "overhead_outside_model": round(1 - (self.train_seconds.get(r, 0.0) + model_busy) / wall, 4),
                    # The same once the adapter is served: the probe/judge/expand/eval phase and closing.
                    "overhead_after_training": round(1 - model_busy / (end - ready), 4),
                }
            )
        return out


def overlap(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in intervals)


def peak_memory_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def curator_catch_up(topology: Topology, bus: Bus, timeout: float = 1800) -> float:
    """Restart curator-0 and time until its fresh consumers have delivered and settled the
    whole log (the curator folds every event into its ledgers as it is delivered)."""
    prefix = "curator__"
    before = {info.name for info in await bus.js.consumers_info(names.STREAM) if info.name.startswith(prefix)}
    topology.kill("curator-0")
    start = time.perf_counter()
    topology.restart("curator-0")
    while time.perf_counter() - start < timeout:
        infos = await bus.js.consumers_info(names.STREAM)
        fresh = [i for i in infos if i.name.startswith(prefix) and i.name not in before]
        if fresh and all((i.num_pending or 0) == 0 and (i.num_ack_pending or 0) == 0 for i in fresh):
            return time.perf_counter() - start
        await anyio.sleep(0.2)
    raise TimeoutError(f"curator-0 had not caught up after {timeout:.0f}s")


async def inject(topology: Topology, replicas: tuple[str, ...]) -> None:
    """kill -9 and restart each replica; ``nats``: stop the server and start it on its store."""
    for replica in replicas:
        if replica == "nats":
            assert topology.nats is not None
            topology.nats.stop()
            await anyio.sleep(1.0)
            await anyio.to_thread.run_sync(topology.nats.start)
        else:
            topology.kill(replica)
            topology.restart(replica)


async def one_scale(args: argparse.Namespace, scale: int, root: Path) -> dict[str, Any]:
    size = args.size * scale
    workdir = root / f"x{scale}"
    # A fresh store each time: on an earlier run's log, the curator folds that run too (a rerun
    # at 18,304 a round on the log of a 73,216 one measured a 6 GB curator and a 27 s close).
    shutil.rmtree(workdir, ignore_errors=True)
    started = time.perf_counter()
    world = write(build(int(size * 1.6), args.test, seed=scale, noise_rate=0.1, catalogue="rich"), workdir / "world")
    model_dir = build_tiny_model(workdir / "tiny")
    server = LoadServer(latency=args.latency, slots=args.slots, error_rate=args.error_rate)
    server.register(read_samples(world["train"]))
    test_sets = [str(path) for name, path in world.items() if name != "train"]
    server.register([item for item in load_eval_sets(test_sets) if isinstance(item, Sample)])
    prepared = time.perf_counter() - started
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    replicas = {name: args.replicas for name in SCALED}
    run = f"scale-x{scale}-{int(time.time())}"
    config = RunConfig(
        run=run,
        seed_path=str(world["train"]),
        rounds=args.rounds,
        initial_size=size,
        round_size=size,
        ppl_cut=PplCut("percentile", 50),
        wait_for_eval=True,
    )
    env = service_env(base_url, model_dir, test_sets, workdir / "artifacts")
    observer = Observer(server)
    result: dict[str, Any] = {"scale": scale, "samples_per_round": size, "prepare_s": round(prepared, 1)}
    with Topology(workdir / "topology", replicas=replicas, env=env, quiet=True) as topology:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve, server, port)
            bus = await Bus.connect(topology.client_settings(access.ADMIN))
            try:
                t0 = time.time()
                await submit_run(bus, config)
                with anyio.fail_after(args.timeout):
                    faults = [(0, ("probe-0", "judge-0", "curator-0")), (1, ("nats",))] if args.faults else []
                    seen = 0  # the stream sequence read up to: a NATS restart ends the reader's consumer
                    while observer.finished is None:
                        try:
                            async for msg, item in bus.read(names.run_filter(run), follow=True, after=seen):
                                seen = msg.metadata.sequence.stream
                                if isinstance(item, bytes):
                                    continue
                                observer.see(msg.metadata.timestamp.timestamp(), item)
                                if faults and isinstance(item, ProbeResult) and item.round == faults[0][0]:
                                    if observer.probed[item.round] >= size // 5:
                                        result.setdefault("faults", []).append(
                                            f"round {item.round} at {observer.probed[item.round]} probed: {faults[0][1]}"
                                        )
                                        await inject(topology, faults.pop(0)[1])
                                        break
                                if observer.finished is not None:
                                    break
                        except Exception as exc:  # the server went away under the reader
                            print(f"reader: {exc!r}; reading on after {seen}", file=sys.stderr)
                            await anyio.sleep(1.0)
                t1 = time.time()
                memory = {replica: round(peak_memory_mib(p.pid), 1) for replica, p in topology.processes.items()}
                nats_process = getattr(topology.nats, "process", None)
                if nats_process is not None:
                    memory["nats-server"] = round(peak_memory_mib(nats_process.pid), 1)
                stream = await bus.js.stream_info(names.STREAM)
                rebuild = await curator_catch_up(topology, bus)
            finally:
                await bus.close()
                tg.cancel_scope.cancel()
    probed = sum(observer.probed.values())
    calls = server.stats()["calls"]
    policy_calls = calls.get("policy", 0) + calls.get("policy_unknown", 0)
    rounds = observer.rounds(args.rounds, server.busy_intervals)
    result |= {
        "run_s": round(t1 - t0, 1),
        "finished": observer.finished.reason if observer.finished else None,
        "events": sum(observer.events.values()),
        "events_by_type": dict(observer.events),
        "events_per_s": round(sum(observer.events.values()) / (t1 - t0), 1),
        "log_bytes": stream.state.bytes,
        "log_bytes_per_sample": round(stream.state.bytes / max(1, probed), 1),
        "samples_probed": probed,
        "rounds": rounds,
        "overhead_outside_model": round(statistics.mean(r["overhead_outside_model"] for r in rounds), 4),
        "round_close_s": [r["close_s"] for r in rounds],
        "peak_memory_mib": memory,
        "curator_rebuild_s": round(rebuild, 2),
        "model_calls": calls,
        "work_done_twice": {
            "policy_calls_beyond_one_per_item": policy_calls - probed - observer.eval_items,
            "judge_calls_beyond_verdicts": calls.get("judge", 0) - observer.judge_llm_calls,
            "adapter_loads_beyond_one_per_round": calls.get("load_adapter", 0) - len(observer.train_seconds),
        },
        "unknown_conversations": calls.get("policy_unknown", 0),
    }
    return result


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """How cost grows with the round's size: per-round wall time and its parts, and peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["samples_per_round"] for r in results]
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    parts = (("wall_s", "round"), ("work_s", "probe, judge, expand, eval"), ("train_s", "trainer (data prep + 1 step)"))
    for part, label in parts:
        time_ax.plot(
            sizes, [statistics.mean(r[part] for r in result["rounds"]) for result in results], "o-", label=label
        )
    time_ax.set(xlabel="samples a round", ylabel="seconds (mean over rounds)", title="Round time")
    time_ax.legend()
    for process in ("curator-0", "expander-0", "probe-0", "nats-server", "trainer-0"):
        memory_ax.plot(sizes, [result["peak_memory_mib"].get(process, 0) for result in results], "o-", label=process)
    memory_ax.set(xlabel="samples a round", ylabel="MiB", title="Peak memory (VmHWM)")
    memory_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=18304, help="samples a round at scale 1 (the paper's)")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--test", type=int, default=500, help="held-out items evaluated each round")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per model answer")
    parser.add_argument("--slots", type=int, default=256, help="answers the load server computes at once")
    parser.add_argument("--error-rate", type=float, default=0.25)
    parser.add_argument("--timeout", type=float, default=7200)
    parser.add_argument("--faults", action="store_true", help="kill replicas in round 0, restart NATS in round 1")
    parser.add_argument("--workdir", default=".looptool/bench-scale")
    parser.add_argument("--out", default="")
    parser.add_argument("--plot", default="", help="write the cost curve here (PNG)")
    parser.add_argument("--plot-from", default="", help="only plot the results of this JSON file")
    args = parser.parse_args()
    if args.plot_from:
        plot(msgspec.json.decode(Path(args.plot_from).read_bytes())["results"], Path(args.plot))
        return
    root = Path(args.workdir).resolve()
    results = []
    for scale in args.scales:
        result = anyio.run(one_scale, args, scale, root)
        print(msgspec.json.format(msgspec.json.encode(result)).decode(), flush=True)
        results.append(result)
    if args.plot:
        plot(results, Path(args.plot))
    if args.out:
        Path(args.out).write_bytes(
            msgspec.json.format(msgspec.json.encode({"command": "python " + " ".join(sys.argv), "results": results}))
        )


if __name__ == "__main__":
    main()
