"""Dataset importers and exporters, all to and from the canonical :class:`~looptool.schemas.Sample`.

Every importer returns an :class:`ImportReport`: the samples, and one :class:`RowError`
(``path:line: field: why``) per rejected row — nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from looptool.data.formats import bfcl, hermes, looptool23k, openai, toolace, xlam
from looptool.data.formats._common import ImportReport, RowError, RowRejected, check_sample_shape, import_rows
from looptool.data.samples import Sample

__all__ = ["FORMATS", "ImportReport", "RowError", "export_jsonl", "import_file", "read_samples", "write_samples"]

# name -> (row parser, row exporter)
FORMATS: dict[str, tuple[Callable[[dict[str, Any]], Sample], Callable[[Sample], dict[str, Any]]]] = {
    "openai": (openai.parse_row, openai.export_row),
    "xlam": (xlam.parse_row, xlam.export_row),
    "hermes": (hermes.parse_row, hermes.export_row),
    "looptool23k": (looptool23k.parse_row, looptool23k.export_row),
    "toolace": (toolace.parse_row, toolace.export_row),
}

_encoder = msgspec.json.Encoder()


def import_file(path: str | Path, fmt: str, answers: str | Path | None = None) -> ImportReport:
    """Import ``path`` in format ``fmt`` (one of :data:`FORMATS`, or ``bfcl`` with ``answers``)."""
    if fmt == "bfcl":
        return bfcl.import_bfcl(path, answers)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join([*FORMATS, 'bfcl'])}")
    return import_rows(path, FORMATS[fmt][0])


def export_jsonl(samples: Iterable[Sample], path: str | Path, fmt: str) -> int:
    """Write samples in ``fmt`` as JSONL; for ``bfcl`` the questions go to ``path`` and the
    possible answers to ``possible_answer/<name>`` beside it, as in BFCL's own data folder."""
    path = Path(path)
    count = 0
    if fmt == "bfcl":
        answer_path = bfcl.answer_path(path)
        answer_path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as questions, open(answer_path, "wb") as answers:
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


def encode_samples(samples: Iterable[Sample]) -> bytes:
    return b"".join(_encoder.encode(sample) + b"\n" for sample in samples)


def decode_samples(data: bytes, origin: str = "<bytes>") -> list[Sample]:
    samples = []
    for number, line in enumerate(data.splitlines(), start=1):
        if line.strip():
            try:
                sample = _sample_decoder.decode(line)
                check_sample_shape(sample)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
                raise ValueError(f"{origin}:{number}: not a LoopTool sample: {exc}") from None
            except RowRejected as exc:
                raise ValueError(f"{origin}:{number}: {exc.field}: {exc.reason}") from None
            samples.append(sample)
    return samples


def read_samples(path: str | Path) -> list[Sample]:
    return decode_samples(Path(path).read_bytes(), str(path))
