"""What every importer shares: rows with their location, per-row errors, the report."""

from __future__ import annotations

import codecs
import gzip
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from looptool.data.calls import CallParseError, extract_calls
from looptool.data.checker import label_problem
from looptool.data.formats._params import parameters_schema
from looptool.data.samples import Lineage, Message, Sample, ToolCall, ToolSpec, sample_id, valid_sample_id
from looptool.kernel.errors import LoopToolError


class RowError(msgspec.Struct, frozen=True):
    """Why one input row was rejected, and where it is (``path:line``)."""

    path: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.reason}"


class ImportReport(msgspec.Struct):
    samples: list[Sample] = msgspec.field(default_factory=list)
    errors: list[RowError] = msgspec.field(default_factory=list)
    rows: int = 0
    duplicates: int = 0  # rows that repeated an earlier row exactly (same sample id), kept once
    suspect: int = 0  # kept although the label fails its own tools (``keep_suspect``), flagged in meta
    repeats: dict[int, int] = msgspec.field(default_factory=dict)  # a repeated row's line -> the first one's

    def summary(self) -> str:
        by_field: dict[str, int] = {}
        for error in self.errors:
            by_field[error.field] = by_field.get(error.field, 0) + 1
        detail = ", ".join(f"{field}: {n}" for field, n in sorted(by_field.items()))
        shown = ", ".join(f"line {line} repeats line {first}" for line, first in list(self.repeats.items())[:5])
        more = ", …" if len(self.repeats) > 5 else ""
        duplicates = f", {self.duplicates} duplicate(s) collapsed ({shown}{more})" if self.duplicates else ""
        suspect = f", {self.suspect} kept with a suspect label" if self.suspect else ""
        return (
            f"{self.rows} rows: {len(self.samples)} imported, {len(self.errors)} rejected"
            + (f" ({detail})" if detail else "")
            + duplicates
            + suspect
        )

    def write_rejects(self, path: str | Path) -> None:
        """One JSON line per rejected row: where, which field, why."""
        encoder = msgspec.json.Encoder()
        with open(path, "wb") as out:
            for error in self.errors:
                out.write(encoder.encode(error) + b"\n")


class RowRejected(LoopToolError, ValueError):
    """Raised inside a row parser; becomes a :class:`RowError` with the row's location."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def read_bytes(path: str | Path) -> bytes:
    """A file's bytes, gunzipped when it is gzipped (by its magic number, not its name)."""
    data = Path(path).read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as exc:
        raise ValueError(f"{path}: a broken gzip file: {exc}") from None


def read_rows(path: str | Path) -> Iterator[tuple[int, Any | RowError]]:
    """``(line, row)`` for JSONL; ``(index + 1, row)`` for a JSON array file, a Parquet file or
    a folder a ``datasets`` Dataset was saved to (``save_to_disk``); JSON may be gzipped.
    Undecodable lines (bad JSON, invalid UTF-8, nesting past the decoder) come back as
    :class:`RowError` so that the caller reports them and goes on."""
    path = Path(path)
    if path.is_dir():
        yield from _dataset_folder_rows(path)
        return
    with open(path, "rb") as head:
        magic = head.read(4)
    if magic == PARQUET_MAGIC:
        yield from _parquet_rows(path)
        return
    try:
        data = read_bytes(path)
    except ValueError as exc:
        yield 1, RowError(str(path), 1, "(file)", str(exc).removeprefix(f"{path}: "))
        return
    data = data.removeprefix(codecs.BOM_UTF8)  # editors on Windows write one; JSON has no use for it
    if data.lstrip().startswith(b"["):
        try:
            items = msgspec.json.decode(data)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            yield 1, RowError(str(path), 1, "(file)", f"invalid JSON array: {exc}")
            return
        for index, item in enumerate(items):
            yield index + 1, item
        return
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, msgspec.json.decode(line)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            yield number, RowError(str(path), number, "(line)", f"invalid JSON: {exc}")


PARQUET_MAGIC = b"PAR1"
_NEEDS = "reading {what} needs {module}: pip install 'looptool[datasets]'"


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any | RowError]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        yield 1, RowError(str(path), 1, "(file)", _NEEDS.format(what="Parquet", module="pyarrow"))
        return
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                index += 1
                yield index, row
    except Exception as exc:  # pyarrow's errors for a broken file: the file, not the import, fails
        yield 1, RowError(str(path), 1, "(file)", f"unreadable Parquet: {exc}")


def _dataset_folder_rows(path: Path) -> Iterator[tuple[int, Any | RowError]]:
    """A ``datasets`` folder: one Dataset, or a DatasetDict's only split (with several, name one
    by its subfolder: ``folder/train``)."""
    try:
        import datasets
    except ImportError:
        yield 1, RowError(str(path), 1, "(folder)", _NEEDS.format(what="a datasets folder", module="datasets"))
        return
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        yield 1, RowError(str(path), 1, "(folder)", f"not a folder datasets saved (save_to_disk): {exc}")
        return
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            splits = ", ".join(f"{path}/{name}" for name in loaded)
            yield 1, RowError(str(path), 1, "(folder)", f"{len(loaded)} splits: import one of {splits}")
            return
        loaded = next(iter(loaded.values()))
    yield from enumerate(loaded, start=1)


def answer_path(questions: str | Path) -> Path:
    """Where a benchmark (BFCL, ACEBench) keeps the ground truth of a question file."""
    questions = Path(questions)
    return questions.parent / "possible_answer" / questions.name


def load_answers(
    path: str | Path, kind: type | tuple[type, ...], shape: str, keep_rows: bool = False
) -> tuple[dict[str, Any], list[RowError]]:
    """``{id: ground_truth}`` (``{id: row}`` with ``keep_rows``) from a possible-answer file, and
    a located error per bad row (``kind``: the ground truth's accepted type(s); ``shape``: how
    the error describes a row)."""
    answers: dict[str, Any] = {}
    errors = []
    for line, row in read_rows(path):
        if isinstance(row, RowError):
            errors.append(row)
        elif not isinstance(row, dict) or "id" not in row or not isinstance(row.get("ground_truth"), kind):
            errors.append(RowError(str(path), line, "ground_truth", f"expected {shape}"))
        else:
            answers[str(row["id"])] = row if keep_rows else row["ground_truth"]
    return answers, errors


def import_rows(
    path: str | Path,
    parse_row: Callable[[dict[str, Any]], Sample | list[Sample]],
    *,
    collapse_duplicates: bool = True,
    keep_suspect: bool = False,
    as_written: bool = False,
) -> ImportReport:
    """Run ``parse_row`` on every row of ``path``; collect samples and located errors. One bad
    row never aborts an import, and a row repeated exactly (same sample id) is kept once —
    except in evaluation sets, whose items are counted as their benchmark counts them.

    Every label is checked against its own tools: one that fails is rejected with the
    checker's reason or, with ``keep_suspect``, kept with ``meta["suspect_label"]`` set so
    that the judge settles it in round 0. ``as_written`` (LoopTool's own layout) keeps each
    sample's label and lineage as the file has them: a noisy label is what the judge is for."""
    report = ImportReport()
    seen: dict[str, tuple[int, Sample]] = {}  # sample id -> (its first line, the sample)
    for line, row in read_rows(path):
        report.rows += 1
        if isinstance(row, RowError):
            report.errors.append(row)
            continue
        if not isinstance(row, dict):
            report.errors.append(
                RowError(str(path), line, "(row)", f"expected a JSON object, got {type(row).__name__}")
            )
            continue
        try:
            parsed = parse_row(row)
            samples = parsed if isinstance(parsed, list) else [parsed]
            for sample in samples:
                check_sample_shape(sample)
            problems = [None if as_written else label_problem(sample) for sample in samples]
            for sample, problem in zip(samples, problems, strict=True):
                if problem is None:
                    continue
                if not keep_suspect:
                    raise RowRejected(*problem)
                sample.meta["suspect_label"] = f"{problem[0]}: {problem[1]}"
        except RowRejected as exc:
            report.errors.append(RowError(str(path), line, exc.field, exc.reason))
            continue
        except (RecursionError, MemoryError):
            report.errors.append(RowError(str(path), line, "(row)", "nested too deeply"))
            continue
        except Exception as exc:  # an importer's own bug must cost one row, not the import
            report.errors.append(RowError(str(path), line, "(row)", f"unexpected {type(exc).__name__}: {exc}"))
            continue
        for sample in samples:
            if collapse_duplicates and not admit_once(report, seen, path, line, sample):
                continue
            if not as_written:
                sample.lineage = Lineage(origin="seed", source=f"{path}:{line}")
            report.suspect += "suspect_label" in sample.meta
            report.samples.append(sample)
    return report


def admit_once(
    report: ImportReport, seen: dict[str, tuple[int, Sample]], path: str | Path, line: int, sample: Sample
) -> bool:
    """Whether ``sample`` (row ``line``) is new: an exact repeat of an earlier row is counted
    with both lines and left out; another sample under an id already used is a rejected row."""
    first = seen.get(sample.id)
    if first is None:
        seen[sample.id] = (line, sample)
        return True
    if _content(first[1]) != _content(sample):  # ids written in the file: two samples, one id
        report.errors.append(
            RowError(str(path), line, "id", f"{sample.id[:80]!r} is line {first[0]}'s id, for another sample")
        )
    else:
        report.duplicates += 1
        report.repeats[line] = first[0]
    return False


def _content(sample: Sample) -> bytes:
    return msgspec.json.encode(msgspec.structs.replace(sample, lineage=Lineage()))


def check_sample_shape(sample: Sample) -> None:
    """What the checker and the judge rely on: a valid id and tools whose parameters are JSON
    Schema objects (``"properties": {"city": "string"}`` is refused here, not in a service)."""
    if not valid_sample_id(sample.id):
        raise RowRejected("id", f"{sample.id[:80]!r} is not a valid sample id (letters, digits, _.:-; at most 128)")
    for index, tool in enumerate(sample.tools):
        problem = schema_problem(tool.function.parameters)
        if problem:
            raise RowRejected(f"tools[{index}].parameters{problem[0]}", problem[1])


def schema_problem(schema: Any, where: str = "", depth: int = 0) -> tuple[str, str] | None:
    """The first place where a parameters schema is not a JSON Schema object the checker reads."""
    if depth > 32:
        return where, "nested more than 32 levels"
    if not isinstance(schema, dict):
        return where, f"expected a JSON Schema object, got {type(schema).__name__}"
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        return f"{where}.properties", f"expected an object, got {type(properties).__name__}"
    for name, spec in properties.items():
        if not isinstance(spec, dict):
            return (
                f"{where}.properties.{name}",
                f"expected a JSON Schema object, got {type(spec).__name__} {spec!r:.40}",
            )
        for key in ("items", "properties"):
            if key in spec:
                inner = spec[key] if key == "items" else {"properties": spec[key]}
                if isinstance(inner, dict):
                    problem = schema_problem(
                        inner, f"{where}.properties.{name}" + (".items" if key == "items" else ""), depth + 1
                    )
                    if problem:
                        return problem
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        return f"{where}.required", "expected a list of parameter names"
    return None


# --------------------------------------------------------------------------- field helpers


def need(row: dict[str, Any], field: str, kind: type | tuple[type, ...]) -> Any:
    if field not in row:
        raise RowRejected(field, "missing")
    value = row[field]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RowRejected(field, f"expected {names}, got {type(value).__name__}")
    return value


def conversation_turns(row: dict[str, Any]) -> Iterator[tuple[str, Any, str]]:
    """``(field, speaker, value)`` for each ``{"from", "value"}`` turn of ``conversations`` (the
    ShareGPT shape Hermes, LLaMA-Factory and ToolACE share), each checked as it is reached."""
    return _turns(need(row, "conversations", list))


def _turns(turns: list[Any]) -> Iterator[tuple[str, Any, str]]:
    for index, turn in enumerate(turns):
        field = f"conversations[{index}]"
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise RowRejected(field, "expected {from, value} with a string value")
        yield field, turn.get("from"), turn["value"]


def json_field(row: dict[str, Any], field: str) -> Any:
    """A field that holds JSON, either decoded already or as a JSON string (xLAM does this)."""
    value = need(row, field, (str, list, dict))
    if isinstance(value, str):
        try:
            return msgspec.json.decode(value)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise RowRejected(field, f"invalid JSON string: {exc}") from None
    return value


def tools_from(raw: Any, field: str) -> list[ToolSpec]:
    """Tool specs from OpenAI ``{"type": "function", "function": {...}}`` or bare function dicts;
    parameters in any published layout (:mod:`._params`) become JSON Schema."""
    if not isinstance(raw, list):
        raise RowRejected(field, f"expected a list of tools, got {type(raw).__name__}")
    tools = []
    for index, item in enumerate(raw):
        function = item.get("function", item) if isinstance(item, dict) else item
        if isinstance(function, dict) and "parameters" in function:
            function = {**function, "parameters": parameters_schema(function["parameters"])}
        try:
            tools.append(msgspec.convert({"function": function}, ToolSpec))
        except msgspec.ValidationError as exc:
            raise RowRejected(f"{field}[{index}]", str(exc)) from None
    names = [tool.function.name for tool in tools]
    if len(set(names)) != len(names):
        raise RowRejected(field, f"duplicate tool names: {sorted({n for n in names if names.count(n) > 1})}")
    return tools


def calls_from(parse: Callable[[], list[ToolCall]], field: str) -> list[ToolCall]:
    try:
        return parse()
    except CallParseError as exc:
        raise RowRejected(field, exc.reason) from None


def category_of(label: list[ToolCall], tools: list[ToolSpec]) -> str:
    if not label:
        return "irrelevance"
    parallel = len(label) > 1
    multiple = len(tools) > 1
    return {
        (False, False): "simple",
        (False, True): "multiple",
        (True, False): "parallel",
        (True, True): "parallel_multiple",
    }[(parallel, multiple)]


def make_sample(
    tools: list[ToolSpec],
    messages: list[Message],
    label: list[ToolCall],
    category: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Sample:
    if not messages:
        raise RowRejected("messages", "no conversation before the label")
    return Sample(
        id=sample_id(tools, messages, label),
        tools=tools,
        messages=messages,
        label=label,
        category=category or category_of(label, tools),
        meta=meta or {},
    )


def assistant_message(text: str, field: str) -> Message:
    """An assistant turn written as text: its calls if it makes any, else its words."""
    calls = calls_from(lambda: extract_calls(text), field)
    return Message(role="assistant", content=None if calls else text, tool_calls=calls)


def sample_from_conversation(tools: list[ToolSpec], messages: list[Message], field: str) -> Sample:
    """The last turn, the assistant's, is the label; the turns before it are the context."""
    if not messages or messages[-1].role != "assistant":
        raise RowRejected(field, "the last turn must be the assistant's (the label)")
    label = messages[-1].tool_calls
    return make_sample(tools, messages[:-1], label)


def samples_from_turns(tools: list[ToolSpec], messages: list[Message], field: str) -> list[Sample]:
    """One sample per assistant decision in a conversation, with the turns before it as context:
    every turn that calls tools, and every reply straight to the user (a "no call" sample). A
    summary written after tool results is no tool-calling decision and yields none."""
    samples = []
    for index, message in enumerate(messages):
        if message.role != "assistant" or index == 0:
            continue
        if message.tool_calls or messages[index - 1].role == "user":
            samples.append(make_sample(tools, messages[:index], message.tool_calls))
    if not samples:
        raise RowRejected(field, "no assistant turn that calls a tool or answers the user")
    return samples
