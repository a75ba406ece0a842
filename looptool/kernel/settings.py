"""Settings: one typed tree, read from a TOML file and ``LOOPTOOL_*`` environment variables.

Environment variables override the file; nesting uses a double underscore, e.g.
``LOOPTOOL_NATS__URL=nats://host:4222`` or ``LOOPTOOL_RUNTIME__MAX_DELIVER=5``. Values are
decoded by msgspec; a bad key or value raises :class:`SettingsError` naming where it came from.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from looptool.kernel.errors import LoopToolError

ENV_PREFIX = "LOOPTOOL_"
CONFIG_ENV = "LOOPTOOL_CONFIG"  # path of the TOML file, when not given on the command line


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class NatsSettings(Section):
    url: str = "nats://127.0.0.1:4222"  # several servers of one cluster: comma-separated
    # An identity's directory written by `looptool secrets` / `looptool up` (user, password, CA):
    # the usual way in. The fields below are for a bus whose credentials come from elsewhere.
    credentials_dir: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None  # NATS .creds (JWT + nkey seed)
    nkeys_seed: str | None = None  # path to an nkey seed file
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout: float = 5.0  # per attempt
    # How long the first connection may keep failing (a server still starting) before the client
    # gives up with an error; afterwards, reconnects go on forever (max_reconnect_attempts).
    first_connect_timeout: float = 30.0
    max_reconnect_attempts: int = -1  # forever: a service outlives a NATS restart
    reconnect_wait: float = 0.5
    storage: Literal["file", "memory"] = "file"
    # Copies JetStream keeps of the event log, the state bucket and the artifact store: 3 on a
    # three-node cluster, so that losing a node loses nothing (1 on a single server).
    replicas: int = 1
    # How long a publish or a read keeps trying while the stream has no leader (a cluster
    # electing one after losing a node).
    leader_timeout: float = 30.0
    # One attempt at reading an artifact: nats-py's object read waits without end for chunks a
    # dropped connection will never bring (seen as a round stalled for good at paper size).
    artifact_timeout: float = 120.0
    max_age_days: float = 30.0  # event log retention
    duplicate_window: float = 600.0  # seconds JetStream remembers Nats-Msg-Id values


class RuntimeSettings(Section):
    concurrency: int = 16  # handlers in flight per replica and event type
    fetch_batch: int = 64
    ack_wait: float = 30.0  # seconds before an unacked message is redelivered
    max_deliver: int = 5  # attempts before a message is dead-lettered
    backoff: list[float] = msgspec.field(default_factory=lambda: [0.2, 1.0, 5.0, 15.0])
    heartbeat_interval: float = 5.0
    drain_timeout: float = 30.0  # on SIGTERM, how long in-flight handlers may finish


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


class KernelSettings(Section):
    """What the kernel itself reads; a domain's settings tree extends it with its sections."""

    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    runtime: RuntimeSettings = msgspec.field(default_factory=RuntimeSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)


S = TypeVar("S", bound="KernelSettings")


class SettingsError(LoopToolError, ValueError):
    """A setting could not be read; the message names the file or variable and the key."""


_PATH_IN_ERROR = re.compile(r"`\$((?:\.[A-Za-z_0-9]+|\[\d+\])*)`")


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Nested dict of env overrides, and a map from dotted key back to the variable name."""
    tree: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SettingsError(f"{name}: {'.'.join(path)} conflicts with another variable")
        node[path[-1]] = _parse_env_value(raw)
        origin[".".join(path)] = name
    return tree, origin


def _parse_env_value(raw: str) -> Any:
    # Lists and tables come as JSON ("[1, 2]", "{...}"); everything else stays a string and msgspec's lax
    # conversion turns "5" into 5 or "true" into True where the field asks for it.
    if raw.startswith(("[", "{")):
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return raw
    return raw


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_toml(path: str | os.PathLike[str], what: str, error: type[ValueError]) -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file raises ``error`` naming the file."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: invalid TOML: {exc}") from None


def load_settings_tree(
    tree: type[S], path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> S:
    """Read a settings tree from ``path`` (or ``$LOOPTOOL_CONFIG``) and the environment."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV)
    from_file = read_toml(path, "settings file", SettingsError) if path else {}
    from_env, env_origin = _env_overrides(environ)
    try:
        return msgspec.convert(_merge(from_file, from_env), tree, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_explain(str(exc), path, env_origin)) from None


def _explain(message: str, path: str | os.PathLike[str] | None, env_origin: dict[str, str]) -> str:
    match = _PATH_IN_ERROR.search(message)
    key = match.group(1).lstrip(".") if match else ""
    # "Object contains unknown field `x`" reports the parent; name the field itself.
    unknown = re.search(r"unknown field `([^`]+)`", message)
    if unknown:
        key = f"{key}.{unknown.group(1)}".lstrip(".")
    where = env_origin.get(re.sub(r"\[\d+\]", "", key)) or (f"{path}" if path else "settings")
    return f"{where}: bad setting {key or '(root)'}: {message}"
