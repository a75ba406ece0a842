"""ACEBench's scoring rules, item by item, on items in ACEBench's own layout.

ACEBench is not on PyPI and its code may not be copied here, so each verdict below is the one
ACEBench's ``eval_main.py`` / ``model_eval/checker.py`` give for that reply — worked out from its
rules and noted beside the row, quirks included (integers are never value-checked, strings match
by containment after normalisation, whitespace is deleted before parsing, the error type of a
parallel miss is the last compared call's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from looptool.data import acebench_scoring
from looptool.data.formats import import_file
from looptool.data.samples import Sample, ToolCall
from looptool.data.scoring import Reply, ScoredItem, metrics, read_predictions, score, score_item

ACEBENCH = Path(__file__).parent / "fixtures" / "formats" / "acebench_card"
PARALLEL = (
    "[HomeLighting_setScene(room='kitchen', brightness={b}, schedule={{'start': '19:30', 'repeat': ['weekdays']}}),"
    " HomeLighting_setScene(room='{study}', brightness=80, schedule={{'start': '07:00'}}),"
    " Weather_getForecast(city='Lisbon', days=3)]"
)

CASES = [
    # (file, id, reply, valid, error type)
    ("normal_single_turn_parallel_function", "_0", PARALLEL.format(b=30, study="study"), True, ""),
    # integers are checked for their type only
    ("normal_single_turn_parallel_function", "_0", PARALLEL.format(b=31, study="study"), True, ""),
    # a string matches when it contains the expected one
    ("normal_single_turn_parallel_function", "_0", PARALLEL.format(b=30, study="my study"), True, ""),
    # no study call: the last call compared against "study" has another name
    (
        "normal_single_turn_parallel_function",
        "_0",
        PARALLEL.format(b=30, study="hall"),
        False,
        "simple_function_checker:unclear",
    ),
    (
        "normal_single_turn_parallel_function",
        "_0",
        "[Weather_getForecast(city='Lisbon', days=3)]",
        False,
        "wrong functions number",
    ),
    (
        "normal_single_turn_parallel_function",
        "_0",
        PARALLEL.format(b=30, study="study").replace("Weather_getForecast", "Weather_now"),
        False,
        "function_mismatch",
    ),
    ("normal_multi_turn_user_adjust", "_0_0", "[Weather_getForecast(city='Porto', days=5)]", True, ""),
    # whitespace is deleted before parsing: "Por to" is "Porto"
    ("normal_multi_turn_user_adjust", "_0_0", "[Weather_getForecast(city='Por to', days=5)]", True, ""),
    ("normal_multi_turn_user_adjust", "_0_0", "[Weather_getForecast(city=5, days=5)]", False, "type_error"),
    (
        "normal_multi_turn_user_adjust",
        "_0_0",
        "[Weather_getForecast(city='Porto', units='C')]",
        False,
        "addition_args",
    ),
    ("normal_multi_turn_user_adjust", "_0_0", "[Weather_getForecast(days=5)]", False, "lack_args"),
    ("normal_multi_turn_user_adjust", "_0_0", "The forecast is sunny.", False, "wrong_output_format"),
    ("normal_multi_turn_user_adjust", "_0_1", "[Weather_getForecast(city='Braga')]", True, ""),
    ("normal_multi_turn_user_adjust", "_0_1", "[Weather_getForecast(city='Porto')]", False, "value_error:string"),
    # "number" reads as int: a float value passes on the expected value's type, unchecked
    ("normal_atom_number", "_0", "[Thermostat_setTarget(room='hall', temperature=30.0, tolerance=2)]", True, ""),
    ("normal_atom_number", "_0", "[Thermostat_setTarget(room='hall', temperature='21.5')]", False, "type_error"),
    # "true" reads as True; strings in lists are normalised
    ("normal_atom_list", "_0", "[Notes_tag(note='groceries', tags=['work', 'FAMILY'], pinned='true')]", True, ""),
    # booleans are checked for their type only; an optional parameter may be left out
    ("normal_atom_list", "_0", "[Notes_tag(note='groceries', tags=['Work', 'Family'], pinned=False)]", True, ""),
    ("normal_atom_list", "_0", "[Notes_tag(note='groceries', tags=['Work', 'Family'])]", True, ""),
    # an argument neither declared nor in the answer
    (
        "normal_single_turn_parallel_function",
        "_0",
        PARALLEL.format(b=30, study="study").replace("days=3)", "days=3, units='metric')"),
        False,
        "addition_args",
    ),
    (
        "normal_atom_list",
        "_0",
        "[Notes_tag(note='groceries', tags=['Family', 'Work'])]",
        False,
        "value_error:list/tuple",
    ),
    (
        "special_irrelevant",
        "_0",
        "Due to the limitations of the function, I cannot solve this problem.",
        True,
        "",
    ),
    ("special_irrelevant", "_0", "[Weather_getForecast(city='Tokyo')]", False, "error_detection"),
    (
        "special_incomplete",
        "_0",
        "Missing necessary parameters (city) for the api (Weather_getForecast)",
        True,
        "",
    ),
    ("special_incomplete", "_0", "Missing necessary parameters for the forecast.", False, "error_correction"),
    ("special_incomplete", "_0", "Which city?", False, "error_detection"),
    (
        "special_error_param",
        "_0",
        "There is incorrect value (4410-012) for the parameters (city) in the conversation history.",
        True,
        "",
    ),
    ("special_error_param", "_0", "There is incorrect value in the request.", False, "error_correction"),
]


def item(category: str, suffix: str) -> Sample:
    samples = import_file(ACEBENCH / f"data_{category}.json", "acebench").samples
    return next(s for s in samples if s.meta["acebench_id"] == category + suffix)


@pytest.mark.parametrize(("category", "suffix", "reply", "valid", "error_type"), CASES)
def test_verdicts_follow_acebench_rules(category: str, suffix: str, reply: str, valid: bool, error_type: str) -> None:
    result = acebench_scoring.check_item(item(category, suffix), reply)
    assert (result.valid, result.error_type) == (valid, error_type), result.error


@pytest.mark.parametrize("case", [c for c in CASES if c[0].startswith("normal") and "(" in c[2]])
def test_calls_from_a_tool_call_reply_score_as_their_python_form(case: tuple[str, str, str, bool, str]) -> None:
    category, suffix, reply, valid, _ = case
    calls = [
        ToolCall(name, arguments)
        for call in acebench_scoring.decode(reply.replace(" ", ""))
        for name, arguments in call.items()
    ]
    assert acebench_scoring.check_item(item(category, suffix), None, calls).valid == valid


def test_multi_turn_dialogues_count_once_and_the_summary_weighs_categories() -> None:
    adjust = [
        score_item(item("normal_multi_turn_user_adjust", s), Reply(text=r))
        for s, r in [
            ("_0_0", "[Weather_getForecast(city='Porto', days=5)]"),
            ("_0_1", "[Weather_getForecast(city='Porto')]"),
        ]
    ]
    irrelevant = score_item(item("special_irrelevant", "_0"), Reply(text="the limitations of the function"))
    scores = metrics([*adjust, irrelevant])
    assert scores["normal_multi_turn_user_adjust"] == 0.0  # one dialogue, one turn wrong
    assert scores["special_irrelevant"] == 1.0
    assert scores["acebench_special"] == pytest.approx(1 / 3)
    assert scores["acebench_summary"] == pytest.approx(0.2676 / 3)


def test_looptool_score_reads_acebench_result_files(tmp_path: Path) -> None:
    predictions = tmp_path / "result.json"
    rows = [
        {"id": "normal_multi_turn_user_adjust_0_0", "result": "[Weather_getForecast(city='Porto', days=5)]"},
        {"id": "normal_multi_turn_user_adjust_0_1", "result": "[Weather_getForecast(city='Braga')]"},
    ]
    predictions.write_text("\n".join(json.dumps(r) for r in rows))
    assert isinstance(read_predictions(predictions)["normal_multi_turn_user_adjust_0_0"], Reply)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "looptool",
            "score",
            "--questions",
            str(ACEBENCH / "data_normal_multi_turn_user_adjust.json"),
            "--predictions",
            str(predictions),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    verdicts = [ScoredItem(**json.loads(line)) for line in done.stdout.splitlines()]
    assert [v.valid for v in verdicts] == [True, True]
    assert "normal_multi_turn_user_adjust" in done.stderr and "acebench_summary" in done.stderr


SENT = {
    "inbox": {
        "1": {"sender_id": "USR1", "receiver_id": "USR2", "message": "Hi", "time": "2024-06-01"},
        "2": {"sender_id": "USR1", "receiver_id": "USR2", "message": "Lunch at noon?"},
    }
}
SEND = "[send_message(sender_name='Ana', receiver_name='Bruno', message='Lunch at noon?')]"
OLDEST_GONE = {"inbox": {"2": {"sender_id": "USR2", "receiver_id": "USR1", "message": "Hello", "time": "2024-06-02"}}}
WRONG_ONE_GONE = {"inbox": {"1": {"sender_id": "USR1", "receiver_id": "USR2", "message": "Hi", "time": "2024-06-01"}}}
WIFI_ON = {"BaseApi": {"wifi": True, "logged_in": True}}

AGENT_CASES = [
    # (id, final states, calls made, valid, error type, process accuracy)
    ("agent_multi_step_0", [WIFI_ON, {"MessageApi": SENT}], ["[turn_on_wifi()]", SEND], True, "", 1.0),
    (
        "agent_multi_step_0",
        [{"BaseApi": {"wifi": False, "logged_in": True}}, {"MessageApi": SENT}],
        ["[turn_on_wifi()]"],
        False,
        "class attributes wrong",
        0.5,
    ),
    # milestones are found in order: a missing first one hides the later ones
    (
        "agent_multi_step_0",
        [{"BaseApi": {"wifi": False, "logged_in": True}}, {"MessageApi": SENT}],
        [SEND],
        False,
        "class attributes wrong",
        0.0,
    ),
    ("agent_multi_step_0", [WIFI_ON], ["[turn_on_wifi()]"], False, "wrong number of class", 0.5),
    # an expected class that no state has the attributes of is not checked: only the count is
    ("agent_multi_step_0", [WIFI_ON, {"PhoneApi": {"battery": 3}}], [], True, "", 1.0),
    # nested objects are checked key by key: an extra message is not looked at
    (
        "agent_multi_step_1",
        [WIFI_ON, {"MessageApi": {"inbox": {**WRONG_ONE_GONE["inbox"], **OLDEST_GONE["inbox"]}}}],
        [],
        True,
        "",
        1.0,
    ),
    # alternative milestone lists: the best one counts
    (
        "agent_multi_step_1",
        [WIFI_ON, {"MessageApi": WRONG_ONE_GONE}],
        ["[get_earliest_message_id()]", "[delete_message(message_id=2)]"],
        False,
        "class attributes wrong",
        0.5,
    ),
]


@pytest.mark.parametrize(("ace_id", "states", "process", "valid", "error_type", "accuracy"), AGENT_CASES)
def test_agent_results_follow_acebench_rules(
    tmp_path: Path, ace_id: str, states: list, process: list[str], valid: bool, error_type: str, accuracy: float
) -> None:
    from looptool.data.scoring import score

    result = tmp_path / "data_agent_multi_step_result.json"
    result.write_text(json.dumps({"id": ace_id, "result": states, "process": process}))
    report, items = score(ACEBENCH / "data_agent_multi_step.json", None, result)
    scored = {item.id: item for item in items}
    assert report.rows == 2 and scored.keys() == {"agent_multi_step_0", "agent_multi_step_1"}
    assert (scored[ace_id].valid, scored[ace_id].error_type, scored[ace_id].process) == (valid, error_type, accuracy)
    other = next(item for item in scored.values() if item.id != ace_id)
    assert (other.valid, other.error_type) == (False, "no_prediction")  # the item left out still counts
    scores = metrics(list(scored.values()))
    assert scores["agent_multi_step"] == (0.5 if valid else 0.0)
    assert scores["agent_multi_step_process"] == pytest.approx(accuracy / 2)
    assert scores["acebench_agent"] == pytest.approx(scores["agent_multi_step"] / 2)


# --------------------------------------------------------------------------- the raw reply, as ACEBench reads it

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from acebench_agreement import MUTATIONS, calls_of  # noqa: E402

# How ACEBench's prompt-mode evaluation (eval_main at 56dd66c) reads a text reply: a single-turn
# reply from its first outermost ``[...]``, whitespace kept; a multi-turn reply with all whitespace
# deleted, parsed whole. A shape it cannot read is "wrong_output_format" there, whatever the calls
# inside. LoopTool once parsed such shapes leniently and scored the calls: 80% agreement (#29).
NEVER_READ = ("JSON call list", "<tool_call> blocks", "bare calls", "a note in brackets first")
READ_IN_SINGLE_TURN = ("fenced list", "<think> first", "text around the list", "a second list after")


@pytest.mark.parametrize("category", ["normal_atom_list", "normal_atom_number", "normal_multi_turn_user_adjust"])
def test_an_acebench_number_is_the_raw_reply_read_as_acebench_reads_it(tmp_path: Path, category: str) -> None:
    questions = ACEBENCH / f"data_{category}.json"
    answers = ACEBENCH / "possible_answer" / questions.name
    truths = {row["id"]: row["ground_truth"] for row in map(json.loads, answers.read_text().splitlines())}
    multi_turn = category.startswith("normal_multi_turn")
    for kind in ("right answer", "one call a line", *NEVER_READ, *READ_IN_SINGLE_TURN):
        predictions = tmp_path / f"{kind}.jsonl"
        predictions.write_text(
            "".join(json.dumps({"id": i, "result": MUTATIONS[kind](calls_of(t))}) + "\n" for i, t in truths.items())
        )
        _, scored = score(questions, answers, predictions)
        verdicts = {(s.valid, s.error_type) for s in scored}
        readable = kind not in NEVER_READ and not (multi_turn and kind in READ_IN_SINGLE_TURN)
        assert verdicts == ({(True, "")} if readable else {(False, "wrong_output_format")}), kind
    # A server that parsed the reply into calls (no text): ACEBench's function-calling mode.
    sample = next(s for s in import_file(questions, "acebench").samples)
    calls = [ToolCall(name, args) for name, args in calls_of(truths[sample.meta["acebench_id"]])]
    assert score_item(sample, Reply(text="", calls=calls)).valid


def test_a_single_turn_reply_keeps_its_whitespace_and_a_multi_turn_one_loses_it() -> None:
    spaced = "[Weather_getForecast(city='Porto', days=5)]"
    single = acebench_scoring.prompt_mode_text("normal_atom_list", f"I'll check. {spaced} [not this]")
    assert single == spaced
    assert acebench_scoring.prompt_mode_text("normal_multi_turn_user_adjust", spaced) == spaced.replace(" ", "")
    assert acebench_scoring.first_outermost_list("[a [b] c") is None  # never closed at depth 0


@pytest.mark.skipif(
    not os.environ.get("LOOPTOOL_ACEBENCH_CHECKOUT"),
    reason="needs ACEBench's own code: set LOOPTOOL_ACEBENCH_CHECKOUT to a checkout (and "
    "LOOPTOOL_ACEBENCH_EXTRA_PATH to where openpyxl is installed)",
)
def test_every_verdict_agrees_with_acebench_own_code(tmp_path: Path) -> None:
    out = tmp_path / "agreement.json"
    command = [sys.executable, str(Path(__file__).resolve().parents[1] / "bench" / "acebench_agreement.py")]
    command += ["--acebench", os.environ["LOOPTOOL_ACEBENCH_CHECKOUT"], "--out", str(out)]
    if os.environ.get("LOOPTOOL_ACEBENCH_EXTRA_PATH"):
        command += ["--extra-path", os.environ["LOOPTOOL_ACEBENCH_EXTRA_PATH"]]
    subprocess.run(command, check=True, timeout=1800)
    assert json.loads(out.read_text())["agreement"] == 1.0
