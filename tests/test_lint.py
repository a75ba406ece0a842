"""`looptool lint` on the published-layout fixtures and on BFCL's own data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from looptool.data import bfcl_reference
from looptool.data.formats import import_file
from looptool.data.lint import LintReport, bfcl_eval_samples, lint, ungrounded_values

FIXTURES = Path(__file__).parent / "fixtures" / "formats"


@pytest.fixture(scope="module")
def bfcl() -> dict:
    return bfcl_eval_samples()


def _lint(path: Path, bfcl: dict, fmt: str = "auto", answers: Path | None = None) -> LintReport:
    report = import_file(path, fmt, answers, keep_suspect=True)
    return lint(path, fmt, report.samples, report.rows, report.errors, report.duplicates, bfcl)


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.iterdir() if p.suffix in (".json", ".jsonl")))
def test_lint_runs_on_every_fixture(name: str, bfcl: dict) -> None:
    report = _lint(FIXTURES / name, bfcl)
    assert report.samples > 0 and sum(report.categories.values()) == report.samples
    assert report.contamination.eval_samples > 3000
    if "card" in name:  # published layouts: every label sound, but the row written to call a tool not offered
        failures = 1 if name == "toolace_llamafactory_card.json" else 0
        assert report.rejected == {} and report.label_failures == failures and report.contamination.contaminated == 0


def test_bfcl_data_is_contaminated_with_itself(bfcl: dict) -> None:
    questions, answers = bfcl_reference.category_files("simple_python")
    report = _lint(questions, bfcl, "bfcl", answers)
    assert report.samples == 400
    assert report.contamination.query_match == report.contamination.contaminated == 400
    assert report.contamination.tool_overlap == 400
    assert report.categories == {"simple_python": 400}


def test_counts_and_decontamination_through_the_cli(tmp_path: Path, bfcl: dict) -> None:
    rows = json.loads((FIXTURES / "xlam_card.json").read_text())
    questions, answers = bfcl_reference.category_files("simple_python")
    leaked = import_file(questions, "bfcl", answers).samples[0]
    tool = leaked.tools[0].function
    rows.append(
        {
            "id": 9,
            "query": leaked.messages[-1].content,
            "tools": json.dumps([{"name": tool.name, "description": tool.description, "parameters": tool.parameters}]),
            "answers": json.dumps([{"name": c.name, "arguments": c.arguments} for c in leaked.label]),
        }
    )
    rows.append(dict(rows[0]))  # an exact duplicate
    bad = dict(rows[2], answers=json.dumps([{"name": "video_comments", "arguments": {"video_id": "zzz-not-asked"}}]))
    rows.append(bad)  # grounded nowhere
    (tmp_path / "d.json").write_text(json.dumps(rows))
    out = tmp_path / "clean.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "looptool", "lint", str(tmp_path / "d.json"), "--json", "--decontaminate", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = msgspec.json.decode(done.stdout, type=LintReport)
    assert report.format == "xlam" and report.rows == 7 and report.samples == 6 and report.exact_duplicates == 1
    assert report.ungrounded == 1 and "zzz-not-asked" in report.ungrounded_examples[0]
    assert report.contamination.contaminated == 1 and report.contamination.contaminated_ids == [
        s.id
        for s in import_file(tmp_path / "d.json", "xlam").samples
        if s.messages[0].content == leaked.messages[-1].content
    ]
    assert len(out.read_text().splitlines()) == 5


def test_grounding_reads_values_in_the_conversation() -> None:
    (sample,) = [
        s for s in import_file(FIXTURES / "xlam_card.json", "xlam").samples if s.label[0].name == "video_comments"
    ]
    assert ungrounded_values(sample) == []
    sample.label[0].arguments["video_id"] = "elsewhere"
    assert ungrounded_values(sample) == [("video_comments", "video_id", "elsewhere")]
