"""Dataset importers and exporters, all to and from the canonical :class:`~looptool.data.samples.Sample`.

Every importer returns an :class:`ImportReport`: the samples, and one :class:`RowError`
(``path:line: field: why``) per rejected row — nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from looptool.data.formats import acebench, bfcl, hermes, hub, looptool23k, openai, sharegpt, toolace, xlam
from looptool.data.formats._common import (
    ImportReport,
    RowError,
    RowRejected,
    answer_path,
    check_sample_shape,
    import_rows,
    read_bytes,
    read_rows,
)
from looptool.data.samples import Sample

__all__ = [
    "BENCHMARKS",
    "FORMATS",
    "ImportReport",
    "RowError",
    "answer_path",
    "detect_format",
    "export_jsonl",
    "import_file",
    "read_samples",
    "write_samples",
]

# name -> (row parser, row exporter)
FORMATS: dict[str, tuple[Callable[[dict[str, Any]], Sample | list[Sample]], Callable[[Sample], dict[str, Any]]]] = {
    "openai": (openai.parse_row, openai.export_row),
    "xlam": (xlam.parse_row, xlam.export_row),
    "hermes": (hermes.parse_row, hermes.export_row),
    "sharegpt": (sharegpt.parse_row, sharegpt.export_row),
    "looptool23k": (looptool23k.parse_row, looptool23k.export_row),
    "toolace": (toolace.parse_row, toolace.export_row),
}

# Benchmarks: question files with an answer file beside them (``--answers`` to point elsewhere).
BENCHMARKS = ("bfcl", "acebench")

_encoder = msgspec.json.Encoder()


def detect_format(path: str | Path) -> tuple[str, str]:
    """``(format, why)`` from the first row's fields — what ``--format auto`` chooses."""
    path = hub.resolve(path)
    row = next((row for _, row in read_rows(path) if isinstance(row, dict)), None)
    if row is None:
        raise ValueError(f"{path}: no JSON object row to detect the format from")
    keys = set(row)
    turns = row.get("conversations")
    speakers = {t.get("from") for t in turns if isinstance(t, dict)} if isinstance(turns, list) else set()
    text = msgspec.json.encode(turns).decode() if turns else ""
    if {"id", "tools", "messages", "label"} <= keys:
        return "samples", "fields id, tools, messages, label (LoopTool samples)"
    if {"query", "tools", "answers"} <= keys:
        return "xlam", "fields query, tools, answers (xLAM / APIGen)"
    if "messages" in keys:
        return "openai", "a messages list (OpenAI / TRL)"
    if {"instruction", "input", "output"} <= keys:
        return "looptool23k", "fields instruction, input, output (LoopTool-23k)"
    if {"question", "function"} <= keys and isinstance(row.get("question"), list):
        return "bfcl", "fields question (turn lists), function (BFCL)"
    if {"question", "function"} <= keys and isinstance(row.get("question"), str):
        return "acebench", "fields question (a 'user: …' dialogue), function (ACEBench)"
    if speakers & {"function_call", "observation"}:
        if not row.get("tools") and "[" in str(row.get("system") or ""):
            return (
                "sharegpt",
                "function_call/observation turns, the tools in the system prompt (ToolACE for LLaMA-Factory)",
            )
        return "sharegpt", "function_call/observation turns (ShareGPT as LLaMA-Factory writes it)"
    if "<tool_call>" in text or "<tools>" in text:
        return "hermes", "<tool_call>/<tools> blocks in the turns (Hermes)"
    if isinstance(row.get("system"), str) and speakers <= {"user", "assistant", "tool"}:
        return "toolace", "a system prompt with the tools, user/assistant/tool turns (ToolACE)"
    if speakers:
        return "sharegpt", "human/gpt turns (ShareGPT)"
    raise ValueError(f"{path}: cannot tell the format from the fields {sorted(keys)[:12]}; give --format")


def import_file(
    path: str | Path, fmt: str, answers: str | Path | None = None, *, keep_suspect: bool = False
) -> ImportReport:
    """Import ``path`` in format ``fmt`` (one of :data:`FORMATS`, or ``bfcl`` with ``answers``).
    Labels that fail their own tools are rejected, or kept and flagged with ``keep_suspect``
    (BFCL's items always are: a benchmark's count must not change). ``path`` may name a cached
    Hub dataset (``hf://datasets/<owner>/<name>[/<file>]``, :mod:`.hub`)."""
    path = hub.resolve(path)
    if fmt == "auto":
        fmt, _ = detect_format(path)
    if fmt == "samples":
        return import_samples(path)
    if fmt == "bfcl":
        return bfcl.import_bfcl(path, answers)
    if fmt == "acebench":
        return acebench.import_acebench(path, answers)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join([*FORMATS, *BENCHMARKS])}")
    return import_rows(path, FORMATS[fmt][0], keep_suspect=keep_suspect)


def export_jsonl(samples: Iterable[Sample], path: str | Path, fmt: str) -> int:
    """Write samples in ``fmt`` as JSONL; for ``bfcl`` the questions go to ``path`` and the
    possible answers to ``possible_answer/<name>`` beside it, as in BFCL's own data folder."""
    path = Path(path)
    count = 0
    if fmt == "bfcl":
        answers_at = answer_path(path)
        answers_at.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as questions, open(answers_at, "wb") as answers:
            for sample in samples:
                question, answer = bfcl.export_rows(sample)
                questions.write(_encoder.encode(question) + b"\n")
                answers.write(_encoder.encode(answer) + b"\n")
                count += 1
        return count
    export = FORMATS[fmt][1]
    with open(path, "wb") as out:
        for sample in samples:
            out.write(_encoder.encode(export(sample)) + b"\n")
            count += 1
    return count


# The canonical form itself (what the loop stores as datasets): one Sample per JSON line.
_sample_decoder = msgspec.json.Decoder(Sample)


def write_samples(samples: Iterable[Sample], path: str | Path) -> int:
    count = 0
    with open(path, "wb") as out:
        for sample in samples:
            out.write(_encoder.encode(sample) + b"\n")
            count += 1
    return count


def encode_jsonl(items: Iterable[Any]) -> bytes:
    """Any msgspec-encodable items as JSONL: an artifact's bytes (datasets, scores, tools)."""
    return b"".join(_encoder.encode(item) + b"\n" for item in items)


def encode_samples(samples: Iterable[Sample]) -> bytes:
    return encode_jsonl(samples)


def decode_samples(data: bytes, origin: str = "<bytes>") -> list[Sample]:
    samples = []
    for number, line in enumerate(data.splitlines(), start=1):
        if line.strip():
            try:
                sample = _sample_decoder.decode(line)
                check_sample_shape(sample)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError) as exc:
                raise ValueError(f"{origin}:{number}: not a LoopTool sample: {exc}") from None
            except RowRejected as exc:
                raise ValueError(f"{origin}:{number}: {exc.field}: {exc.reason}") from None
            samples.append(sample)
    return samples


def import_samples(path: str | Path) -> ImportReport:
    """LoopTool's own layout, from a user: a bad row is reported by line and field like any
    format's, never fatal; exact repeats are counted by line; labels and lineage as written."""
    return import_rows(path, _sample_row, as_written=True)


def _sample_row(row: dict[str, Any]) -> Sample:
    try:
        return msgspec.convert(row, Sample)
    except msgspec.ValidationError as exc:
        reason, _, field = str(exc).partition(" - at `$.")
        raise RowRejected(field.rstrip("`") or "(row)", reason) from None


def read_samples(path: str | Path) -> list[Sample]:
    return decode_samples(read_bytes(path), str(path))
