"""The evaluation suite in data/suite.jsonl, and load_suite's refusal of malformed files."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from controller.suite import DEFAULT_SUITE, SuiteError, SuiteItem, load_suite

SPLITS = ("train", "val", "test")
EXPECTED_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
TOLERANCE = 0.05


@pytest.fixture(scope="module")
def suite() -> list[SuiteItem]:
    return load_suite(DEFAULT_SUITE)


def by_category(items: list[SuiteItem]) -> dict[str, list[SuiteItem]]:
    groups: dict[str, list[SuiteItem]] = {}
    for item in items:
        groups.setdefault(item.category, []).append(item)
    return groups


def test_size_and_categories(suite: list[SuiteItem]) -> None:
    assert len(suite) >= 1000
    categories = by_category(suite)
    assert len(categories) >= 3
    for category, items in categories.items():
        assert len(items) >= 250, category


def test_ids_unique_and_prefixed(suite: list[SuiteItem]) -> None:
    ids = [item.id for item in suite]
    assert len(ids) == len(set(ids))
    for item in suite:
        assert item.id.startswith(f"{item.category}-"), item.id


def test_four_distinct_choices_and_label_in_range(suite: list[SuiteItem]) -> None:
    for item in suite:
        assert len(item.choices) == 4, item.id
        assert len({c.casefold() for c in item.choices}) == 4, item.id
        assert all(c.strip() == c and c for c in item.choices), item.id
        assert 0 <= item.label < 4, item.id


def test_prompts_are_stems(suite: list[SuiteItem]) -> None:
    for item in suite:
        assert item.prompt == item.prompt.rstrip(), item.id
        assert len(item.prompt) <= 600, item.id
        if item.category != "math":  # GSM8K problems may end in an instruction
            assert item.question.endswith("?"), item.id
            assert not item.prompt.endswith(":"), item.id
    for item in by_category(suite).get("math", []):
        assert item.prompt.startswith("Question: ") and item.prompt.endswith("\nAnswer:")
        assert all(re.fullmatch(r"\d+", c) for c in item.choices), item.id


def test_every_category_in_every_split(suite: list[SuiteItem]) -> None:
    for category, items in by_category(suite).items():
        present = {item.split for item in items}
        assert present == set(SPLITS), category


def test_split_proportions(suite: list[SuiteItem]) -> None:
    for category, items in by_category(suite).items():
        counts = Counter(item.split for item in items)
        for split, expected in EXPECTED_FRACTIONS.items():
            share = counts[split] / len(items)
            assert abs(share - expected) <= TOLERANCE, (category, split, share)


def test_label_positions_not_degenerate(suite: list[SuiteItem]) -> None:
    for category, items in by_category(suite).items():
        counts = Counter(item.label for item in items)
        for position in range(4):
            share = counts[position] / len(items)
            assert 0.10 <= share <= 0.40, (category, position, share)


def test_sources_name_package_versions(suite: list[SuiteItem]) -> None:
    for item in suite:
        assert re.search(r"[A-Za-z0-9_.-]+==\d", item.source), item.id


# ------------------------------------------------------------------------ malformed files

GOOD = {
    "id": "geography-capital-fr",
    "category": "geography",
    "split": "train",
    "prompt": "The capital of France is",
    "question": "What is the capital of France?",
    "choices": ["Paris", "Rome", "Madrid", "Berlin"],
    "label": 0,
    "source": "test",
}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_good_file_loads(tmp_path: Path) -> None:
    other = {**GOOD, "id": "geography-capital-it", "label": 1}
    items = load_suite(write_lines(tmp_path / "s.jsonl", [json.dumps(GOOD), json.dumps(other)]))
    assert [item.id for item in items] == ["geography-capital-fr", "geography-capital-it"]


def test_bad_json_line_is_named(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", [json.dumps(GOOD), '{"id": "oops",'])
    with pytest.raises(SuiteError, match=rf"{re.escape(str(path))}:2:"):
        load_suite(path)


def test_label_out_of_range_is_named(tmp_path: Path) -> None:
    bad = {**GOOD, "id": "geography-capital-it", "label": 4}
    path = write_lines(tmp_path / "s.jsonl", [json.dumps(GOOD), "", json.dumps(bad)])
    with pytest.raises(SuiteError, match=r"(?s):3:.*label 4 out of range"):
        load_suite(path)


def test_duplicate_id_is_named(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", [json.dumps(GOOD), json.dumps(GOOD)])
    with pytest.raises(SuiteError, match=r":2: duplicate item id 'geography-capital-fr'"):
        load_suite(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite(tmp_path / "absent.jsonl")
