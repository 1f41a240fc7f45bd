"""Prompt templates for scoring answer choices: the same model with another template is another
expert. Each template turns a prompt and its choices into one shared prefix (decoded once) and
one continuation per choice."""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Literal

Template = Literal["cloze", "qa", "letter"]
TEMPLATES: tuple[Template, ...] = ("cloze", "qa", "letter")


@dataclass(frozen=True)
class ChoicePrompt:
    prefix: str
    continuations: list[str]


def choice_prompt(
    template: Template, prompt: str, question: str | None, choices: list[str]
) -> ChoicePrompt:
    """
    - ``cloze``: each choice continues the stem ("The capital of France is" + " Paris").
    - ``qa``: "Question: ...\\nAnswer:" + " Paris", using the question form when there is one.
    - ``letter``: the question with lettered choices, scored as " A", " B", ...
    """
    stem = prompt.rstrip()
    asked = (question or prompt).strip()
    if template == "cloze":
        return ChoicePrompt(stem, [" " + c.strip() for c in choices])
    if template == "qa":
        return ChoicePrompt(f"Question: {asked}\nAnswer:", [" " + c.strip() for c in choices])
    letters = string.ascii_uppercase[: len(choices)]
    listed = "\n".join(f"{letter}. {c.strip()}" for letter, c in zip(letters, choices, strict=True))
    return ChoicePrompt(f"{asked}\n{listed}\nAnswer:", [" " + letter for letter in letters])
