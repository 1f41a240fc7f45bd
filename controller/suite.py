"""The evaluation suite: multiple-choice prompts with gold answers, categories and fixed splits.

Multiple choice only: the gate learns from each expert's probability of the gold choice, which a
free-text answer does not have, so free-text prompts cannot be profiled (the fleet still answers
them). A user's own suite is a JSONL file of ``SuiteItem`` (JSON Schema: ``moe2 schema --out
DIR`` writes ``SuiteItem.schema.json``; ``examples/suite-example.jsonl`` is a small one).

The suite is built by ``scripts/build_suite.py`` from data that PyPI packages ship (see
``docs/suite.md`` for provenance and licences) and stored as JSON lines in ``data/suite.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from messages.base import TOPIC_LEVEL_PATTERN

Split = Literal["train", "val", "test"]
DEFAULT_SUITE = Path(__file__).resolve().parents[1] / "data" / "suite.jsonl"


class SuiteError(ValueError):
    """A suite file that cannot be used; says which line and why."""


class SuiteItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=TOPIC_LEVEL_PATTERN)
    category: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    split: Split
    prompt: str = Field(min_length=1, description="A stem that each choice can continue")
    question: str = Field(min_length=1, description="The same as a question, for QA templates")
    choices: list[str] = Field(min_length=2, max_length=26)
    label: int = Field(ge=0, description="Index of the gold choice")
    source: str = Field(description="Package and dataset the item was built from")

    @model_validator(mode="after")
    def _label_in_range(self) -> SuiteItem:
        if self.label >= len(self.choices):
            raise ValueError(f"label {self.label} out of range for {len(self.choices)} choices")
        if len(set(self.choices)) != len(self.choices):
            raise ValueError("choices must be distinct")
        return self


def load_suite(path: Path = DEFAULT_SUITE) -> list[SuiteItem]:
    if not path.is_file():
        raise SuiteError(f"suite file {path} does not exist (build it: scripts/build_suite.py)")
    items: list[SuiteItem] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = SuiteItem.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            where = f"{path}:{number}: not valid JSON"
            raise SuiteError(f"{where}: {exc.msg} (column {exc.colno})") from None
        except ValidationError as exc:
            raise SuiteError(f"{path}:{number}: {_one_line(exc)}") from None
        if item.id in seen:
            raise SuiteError(f"{path}:{number}: duplicate item id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    return items


def _one_line(exc: ValidationError) -> str:
    """Every problem of one suite line, in one line: ``label: label 4 out of range...``."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "item"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts) + " (the format: `moe2 schema --out DIR` writes SuiteItem.schema.json)"


def save_suite(items: list[SuiteItem], path: Path = DEFAULT_SUITE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(item.model_dump_json() + "\n" for item in items), encoding="utf-8")


def stratified(items: list[SuiteItem], per_group: int) -> list[SuiteItem]:
    """The first ``per_group`` items of every (category, split), in suite order."""
    counts: dict[tuple[str, str], int] = {}
    kept = []
    for item in items:
        group = (item.category, item.split)
        if counts.get(group, 0) < per_group:
            counts[group] = counts.get(group, 0) + 1
            kept.append(item)
    return kept


def stratified_sample(items: list[SuiteItem], n: int) -> list[SuiteItem]:
    """``n`` items (all when ``n`` is 0 or more than there are) spread evenly over every
    (category, split): one of each group in turn, each group in suite order, the result in
    suite order. Every group is represented once ``n`` reaches the number of groups."""
    if n <= 0 or n >= len(items):
        return list(items)
    groups: dict[tuple[str, str], list[SuiteItem]] = {}
    for item in items:
        groups.setdefault((item.category, item.split), []).append(item)
    queues = [list(reversed(g)) for g in groups.values()]
    kept: set[str] = set()
    while len(kept) < n:
        for queue in queues:
            if queue and len(kept) < n:
                kept.add(queue.pop().id)
    return [i for i in items if i.id in kept]
