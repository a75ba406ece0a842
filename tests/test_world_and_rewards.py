"""The synthetic world, the GRPO reward functions, and `looptool score` end to end."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import msgspec

from looptool.data.checker import check_sample
from looptool.data.formats import answer_path, import_file, read_samples
from looptool.data.samples import ToolCall
from looptool.data.worlds.noise import LABEL_NOISE
from looptool.data.worlds.synthetic import (
    CATEGORIES,
    World,
    build,
    clean_label,
    label_is_noisy,
    with_clean_label,
    write,
)
from looptool.loop.rewards import correctness_reward, format_reward, grpo_row


def test_world_is_seeded_and_covers_every_category() -> None:
    first, again, other = build(400, 100, seed=5), build(400, 100, seed=5), build(400, 100, seed=6)
    assert first == again
    assert [s.id for s in first.train] != [s.id for s in other.train]
    assert set(Counter(s.category for s in first.train)) == set(CATEGORIES)
    assert not {s.id for s in first.train} & {s.id for s in first.test}
    assert len({s.id for s in first.train}) == 400


def test_world_scales_to_tens_of_thousands() -> None:
    data = build(20000, 2000, seed=1)
    assert len(data.train) == 20000 and len(data.test) == 2000


def test_clean_world_labels_pass_the_checker_and_are_grounded() -> None:
    data = build(500, 200, seed=2)
    for sample in data.train + data.test:
        assert check_sample(sample, sample.label).valid, sample
        request = " ".join(m.content or "" for m in sample.messages)
        for call in sample.label:
            for value in call.arguments.values():
                if isinstance(value, str):
                    assert value in request, (value, request)


def test_world_tools_use_every_parameter_shape() -> None:
    schemas = [p for t in World().tools for p in t.spec().function.parameters["properties"].values()]
    kinds = {s["type"] for s in schemas}
    assert {"string", "integer", "number", "boolean", "array", "object"} <= kinds
    assert any("enum" in s for s in schemas)
    assert any(p for t in World().tools for p in t.params if not p.required)


def test_label_noise_is_controlled_and_recorded() -> None:
    data = build(2000, 0, seed=3, noise_rate=0.3)
    noisy = [s for s in data.train if "noise" in s.meta]
    assert 0.2 < len(noisy) / len(data.train) < 0.35
    assert set(Counter(s.meta["noise"] for s in noisy)) == set(LABEL_NOISE)
    for sample in noisy:
        clean = msgspec.convert(sample.meta["clean_label"], list[ToolCall])
        assert clean != sample.label
        assert check_sample(sample, clean).valid is False or sample.meta["noise"] == "wrong_value"
        assert clean_label(sample) == clean and label_is_noisy(sample)
        fixed = with_clean_label(sample)
        assert fixed.label == clean and not label_is_noisy(fixed) and label_is_noisy(sample)  # a copy
    assert not any(label_is_noisy(s) or with_clean_label(s) is not s for s in data.train if "noise" not in s.meta)


def test_similar_samples_keep_the_capability() -> None:
    world = World(0)
    rng = random.Random(0)
    for seed in build(50, 0, seed=4).train:
        for new in world.similar(seed, 3, rng):
            assert new.category == seed.category
            if seed.label:
                assert seed.label[0].name in {c.name for c in new.label}


def test_written_world_reads_back(tmp_path: Path) -> None:
    data = build(100, 60, seed=9)
    paths = write(data, tmp_path)
    assert read_samples(paths["train"]) == data.train
    total = 0
    for category in CATEGORIES:
        if category in paths:
            report = import_file(paths[category], "bfcl", answer_path(paths[category]))
            assert report.errors == [] and {s.category for s in report.samples} == {category}
            total += len(report.samples)
    assert total == 60


def test_rich_world_holds_out_domains_for_the_test_split_only() -> None:
    held_out = ("library", "education")
    data = build(1500, 400, seed=2, catalogue="rich", held_out_domains=held_out, unseen_share=0.25)
    domains = Counter(s.meta["domain"] for s in data.train)
    assert len(domains) == 14 and not set(domains) & set(held_out)  # 16 domains, 2 held out
    offered_in_train = {t.function.name for s in data.train for t in s.tools}
    unseen = [s for s in data.test if s.meta.get("unseen_tool")]
    assert 0.15 < len(unseen) / len(data.test) < 0.35
    assert all(s.meta["domain"] in held_out for s in unseen)
    # its main tool was never seen in training, not even offered as a distractor
    assert all(s.label[0].name not in offered_in_train for s in unseen if s.label)
    for sample in data.train + data.test:  # every value still grounded in the request
        assert check_sample(sample, sample.label).valid, sample
        request = " ".join(m.content or "" for m in sample.messages)
        assert all(str(v) in request for c in sample.label for v in c.arguments.values() if isinstance(v, str))


def test_prior_call_samples_are_multi_turn_conversations() -> None:
    data = build(400, 0, seed=3, catalogue="rich", prior_calls=0.5)
    multi = [s for s in data.train if any(m.role == "tool" for m in s.messages)]
    assert 0.35 < len(multi) / len(data.train) < 0.65
    for sample in multi:
        roles = [m.role for m in sample.messages]
        assert roles == ["user", "assistant", "tool", "assistant", "user"]
        earlier = sample.messages[1].tool_calls[0]
        assert earlier.name in {t.function.name for t in sample.tools}  # an offered tool
        assert sample.messages[2].name == earlier.name


def test_label_noise_rates_per_kind() -> None:
    rates = {"wrong_value": 0.2, "missing_required": 0.1}
    data = build(3000, 0, seed=4, catalogue="rich", noise_rates=rates)
    counts = Counter(s.meta.get("noise") for s in data.train)
    with_label = sum(bool(s.label) for s in data.train)
    assert 0.16 < counts["wrong_value"] / with_label < 0.24
    assert 0.06 < counts["missing_required"] / with_label < 0.14  # a few labels have no required one
    assert set(counts) == {None, "wrong_value", "missing_required"}


def test_excluded_ids_are_never_drawn() -> None:
    first = build(300, 0, seed=5, catalogue="rich").train
    again = build(300, 0, seed=5, catalogue="rich", exclude=frozenset(s.id for s in first)).train
    assert not {s.id for s in first} & {s.id for s in again}


def test_world_expander_writes_around_rich_tools_and_never_held_out_ones() -> None:
    world = World.of("rich", held_out=("library",))
    rng = random.Random(1)
    seeds = build(200, 0, seed=6, catalogue="rich", held_out_domains=("library",)).train
    for seed in seeds[:60]:
        for new in world.similar(seed, 2, rng):
            assert new.category == seed.category
            assert not any(t.function.name.endswith("_book") for t in new.tools)  # library's noun
            if seed.label:
                assert seed.label[0].name in {c.name for c in new.label}


def test_grpo_rewards_with_trl_calling_convention() -> None:
    sample = next(s for s in build(50, 0, seed=1).train if s.category == "parallel")
    row = grpo_row(sample)
    right = "\n".join(
        f"<tool_call>{msgspec.json.encode({'name': c.name, 'arguments': c.arguments}).decode()}</tool_call>"
        for c in reversed(sample.label)
    )
    wrong = right.replace(sample.label[0].name, "nope")
    completions = [
        [{"role": "assistant", "content": right}],
        [{"role": "assistant", "content": wrong}],
        [{"role": "assistant", "content": "<tool_call>{oops"}],
        [{"role": "assistant", "content": "no call"}],
    ]
    columns = {key: [row[key]] * 4 for key in ("tools", "answer", "category")}
    prompts = [row["prompt"]] * 4
    assert correctness_reward(prompts=prompts, completions=completions, **columns) == [1.0, 0.0, 0.0, 0.0]
    assert format_reward(prompts=prompts, completions=completions, **columns) == [1.0, 1.0, 0.0, 1.0]


def test_no_call_label_is_rewarded_for_a_reply_without_calls() -> None:
    sample = next(s for s in build(200, 0, seed=1).train if s.category == "irrelevance")
    row = grpo_row(sample)
    columns = {key: [row[key]] * 2 for key in ("tools", "answer", "category")}
    call = f'<tool_call>{{"name": "{sample.tools[0].function.name}", "arguments": {{}}}}</tool_call>'
    assert correctness_reward(completions=["I cannot help with that using these tools.", call], **columns) == [1.0, 0.0]


def test_score_command_prints_items_and_a_table(tmp_path: Path) -> None:
    data = build(0, 40, seed=11)
    paths = write(data, tmp_path)
    questions = paths["parallel"]
    report = import_file(questions, "bfcl", answer_path(questions))
    lines = []
    for index, sample in enumerate(report.samples):
        if index == 0:
            lines.append({"id": sample.meta["bfcl_id"], "text": "<tool_call>{broken"})
        elif index == 1:
            continue  # no prediction at all
        else:
            lines.append(
                {
                    "id": sample.meta["bfcl_id"],
                    "calls": [{"name": c.name, "arguments": c.arguments} for c in sample.label],
                }
            )
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_bytes(b"\n".join(msgspec.json.encode(line) for line in lines))
    result = subprocess.run(
        [sys.executable, "-m", "looptool", "score", "--questions", str(questions), "--predictions", str(predictions)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    items = [msgspec.json.decode(line) for line in result.stdout.splitlines()]
    assert len(items) == len(report.samples)
    assert items[0]["error_type"] == "parse" and items[1]["error_type"] == "no_prediction"
    assert all(item["valid"] for item in items[2:])
    n = len(report.samples)
    assert f"{n - 2}" in result.stderr and "overall" in result.stderr


def test_score_command_names_a_bad_prediction_line(tmp_path: Path) -> None:
    paths = write(build(0, 20, seed=11), tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "simple_0", "calls": []}\n{"id": 7}\n')
    result = subprocess.run(
        [sys.executable, "-m", "looptool", "score", "--questions", str(paths["simple"]), "--predictions", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{bad}:2: id: expected a string id" in result.stderr


def test_world_command_writes_the_rich_world_with_held_out_domains(tmp_path: Path) -> None:
    from looptool.app.cli import main

    args = ["world", "--out", str(tmp_path), "--train", "200", "--test", "80", "--catalogue", "rich"]
    assert main([*args, "--held-out", "library", "--unseen-share", "0.5", "--prior-calls", "0.3"]) == 0
    train = read_samples(tmp_path / "train.jsonl")
    assert len(train) == 200 and not {s.meta["domain"] for s in train} & {"library"}
    assert any(m.role == "tool" for s in train for m in s.messages)
    tests = [
        s
        for category in CATEGORIES
        if (tmp_path / "test" / f"BFCL_v4_{category}.json").exists()
        for s in import_file(
            tmp_path / "test" / f"BFCL_v4_{category}.json",
            "bfcl",
            answer_path(tmp_path / "test" / f"BFCL_v4_{category}.json"),
        ).samples
    ]
    assert len(tests) == 80
    assert any(c.name.endswith("_book") for s in tests for c in s.label)  # a held-out tool, test only
