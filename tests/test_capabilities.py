"""The report's capability dashboard: the checker's own error types mapped to kinds of mistake,
and per-round failures, expansion targets and label corrections."""

from __future__ import annotations

from pathlib import Path

import msgspec

from looptool.app.report import write_report
from looptool.data.checker import check_sample
from looptool.data.samples import Sample, ToolCall
from looptool.data.worlds.synthetic import build
from looptool.kernel.events import ArtifactRef
from looptool.loop import capabilities
from looptool.loop.events import DatasetReady, ExpandResult, JudgeVerdict, ProbeResult
from looptool.loop.ledger import RunLedger


def _single_call_sample() -> Sample:
    return next(s for s in build(200, 0, seed=5).train if s.category == "simple" and "noise" not in s.meta)


def test_the_checkers_error_types_map_to_kinds_of_mistake() -> None:
    sample = _single_call_sample()
    call = sample.label[0]
    required = sample.tools[0].function.parameters["required"][0]
    value = call.arguments[required]
    wrong_value = value + 1 if isinstance(value, (int, float)) else f"{value}-x"
    wrong_type = "text" if not isinstance(value, str) else 12345
    cases = {
        "wrong function": [ToolCall("no_such_tool", call.arguments)],
        "missing parameter": [ToolCall(call.name, {k: v for k, v in call.arguments.items() if k != required})],
        "unexpected parameter": [ToolCall(call.name, {**call.arguments, "invented": 1})],
        "wrong value": [ToolCall(call.name, {**call.arguments, required: wrong_value})],
        "wrong type": [ToolCall(call.name, {**call.arguments, required: wrong_type})],
        "missed call": [],
        "wrong number of calls": [call, call],
    }
    for kind, prediction in cases.items():
        result = check_sample(sample, prediction)
        assert not result.valid and capabilities.failure_kind(result.error_type) == kind, (kind, result)
    irrelevant = msgspec.structs.replace(sample, label=[], category="irrelevance")
    assert capabilities.failure_kind(check_sample(irrelevant, [call]).error_type) == "over-call"
    assert capabilities.failure_kind("parse") == "unparseable output"
    assert capabilities.failure_kind(None) == "other"


def test_the_dashboard_per_round(tmp_path: Path) -> None:
    sample = _single_call_sample()
    call = sample.label[0]
    other = msgspec.structs.replace(sample, id="s-other", category="multiple")
    fixed_label = [ToolCall(call.name, {**call.arguments, "note": "fixed"})]
    ledger = RunLedger("r")
    for event in [
        DatasetReady(run="r", dataset=ArtifactRef(bucket="b", name="n"), size=2),
        ProbeResult(
            run="r", sample_id=sample.id, outcome="failed", ppl=2.0, error_type="value_error:others", sample=sample
        ),
        ProbeResult(run="r", sample_id=other.id, outcome="failed", ppl=2.0, error_type="parse", sample=other),
        JudgeVerdict(run="r", sample_id=sample.id, verdict="prediction_wrong", action="label_ok"),
        JudgeVerdict(
            run="r", sample_id=other.id, verdict="label_wrong", action="label_fixed", corrected_label=fixed_label
        ),
        ExpandResult(run="r", seed_id=sample.id, samples=[sample, sample, sample]),
    ]:
        ledger.apply(event)
    round0 = ledger.round(0)
    assert capabilities.failures_by_kind(round0) == {"unparseable output": 1, "wrong value": 1}
    assert capabilities.failures_by_category(round0) == {"multiple": (1, 1), "simple": (1, 1)}
    assert capabilities.expansion_targets(round0) == {"wrong value": 3}
    assert capabilities.corrections(round0) == [capabilities.Correction(other.id, other.label, fixed_label)]
    page = write_report(ledger, tmp_path)[0].read_text()
    assert "<h2>Capabilities</h2>" in page and "expansions for wrong value" in page
    assert "Labels corrected by the judge: 1." in page and "note=&#x27;fixed&#x27;" in page


def test_the_report_shows_each_benchmarks_headline_per_round(tmp_path: Path) -> None:
    from looptool.app.report import metric_columns
    from looptool.loop.events import EvalCompleted

    ledger = RunLedger("r")
    for round, score in [(0, 0.2), (1, 0.3)]:
        ledger.apply(DatasetReady(run="r", round=round, dataset=ArtifactRef(bucket="b", name="n"), size=1))
        metrics = {"overall": score, "simple_python": score, "multi_turn_base": score / 2, "bfcl_overall": score / 3}
        ledger.apply(EvalCompleted(run="r", round=round, model=f"m-r{round}", metrics=metrics, n_items=10))
    ledger.apply(
        EvalCompleted(run="r", round=0, model="base", metrics={"overall": 0.1, "acebench_summary": 0.4}, n_items=3)
    )
    assert metric_columns(ledger) == ["overall", "acebench_summary", "bfcl_overall", "multi_turn_base", "simple_python"]
    page = write_report(ledger, tmp_path)[0].read_text()
    assert "<th>bfcl_overall</th>" in page and "0.100" in page and "—" in page
