"""A user's own labelled data: the suite format's JSON Schema, the example file, and one clear
error (with its line number) for a malformed line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.suite import SuiteError, SuiteItem, load_suite

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "suite-example.jsonl"


def test_the_example_suite_loads_and_covers_train_and_val_per_category() -> None:
    items = load_suite(EXAMPLE)
    assert len(items) == 8
    for category in {i.category for i in items}:
        splits = {i.split for i in items if i.category == category}
        assert {"train", "val"} <= splits, category  # what a newcomer is profiled on


def test_moe2_schema_writes_the_suite_format(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "moe2", "schema", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    schema = json.loads((tmp_path / "SuiteItem.schema.json").read_text())
    assert set(schema["required"]) == {"id", "category", "split", "prompt", "question",
                                       "choices", "label", "source"}  # fmt: skip
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(SuiteItem.model_fields)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"id": "x",', "not valid JSON"),
        ('{"id": "x-1", "category": "geo"}', "split: Field required"),
        (
            json.dumps(
                {
                    "id": "x-1",
                    "category": "geo",
                    "split": "train",
                    "prompt": "p",
                    "question": "q",
                    "choices": ["a", "b"],
                    "label": 5,
                    "source": "s",
                }
            ),  # fmt: skip
            "label 5 out of range for 2 choices",
        ),
        (
            json.dumps(
                {
                    "id": "x-1",
                    "category": "geo",
                    "split": "later",
                    "prompt": "p",
                    "question": "q",
                    "choices": ["a", "b"],
                    "label": 0,
                    "source": "s",
                }
            ),  # fmt: skip
            "split: Input should be 'train', 'val' or 'test'",
        ),
    ],
)
def test_a_malformed_line_is_one_error_with_its_number(
    tmp_path: Path, line: str, expected: str
) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(EXAMPLE.read_text().splitlines()[0] + "\n\n" + line + "\n")
    with pytest.raises(SuiteError) as caught:
        load_suite(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:3: ") and expected in message
    assert "\n" not in message  # one line, not pydantic's report
