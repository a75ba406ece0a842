"""A toy service for runtime tests: answers each ProbeTask with a ProbeResult.

Knobs ride in the sample's meta: ``sleep`` (seconds of work), ``fail`` (always raise).
It is a real Service run by the real runtime, in-process or as ``looptool serve
toy_service:echo`` in a subprocess.
"""

from __future__ import annotations

import os

import anyio

from looptool.kernel.runtime import Context, Service
from looptool.loop.events import ProbeResult, ProbeTask

echo = Service("echo")
handled: list[tuple[str, str]] = []  # (replica, sample id), for in-process tests


@echo.on(ProbeTask)
async def answer(ctx: Context, task: ProbeTask) -> None:
    meta = task.sample.meta
    if meta.get("fail"):
        raise RuntimeError(f"refusing sample {task.sample.id}")
    if meta.get("sleep"):
        await anyio.sleep(float(meta["sleep"]))
    handled.append((ctx.replica, task.sample.id))
    await ctx.publish(
        ProbeResult(
            run=task.run,
            round=task.round,
            sample_id=task.sample.id,
            outcome="mastered",
            ppl=1.0,
            raw=f"pid={os.getpid()}",
        )
    )
