"""Choice templates: one prefix decoded once, one continuation per choice."""

from __future__ import annotations

import pytest

from agent.templates import TEMPLATES, choice_prompt

CHOICES = ["Berlin", " Paris ", "Rome"]


def test_cloze_continues_the_stem() -> None:
    rendered = choice_prompt("cloze", "The capital of France is ", None, CHOICES)
    assert rendered.prefix == "The capital of France is"
    assert rendered.continuations == [" Berlin", " Paris", " Rome"]


def test_qa_uses_the_question_form_when_given() -> None:
    rendered = choice_prompt("qa", "The capital of France is", "What is France's capital?", CHOICES)
    assert rendered.prefix == "Question: What is France's capital?\nAnswer:"
    assert rendered.continuations == [" Berlin", " Paris", " Rome"]
    fallback = choice_prompt("qa", "The capital of France is", None, CHOICES)
    assert fallback.prefix == "Question: The capital of France is\nAnswer:"


def test_letter_lists_the_choices_and_scores_letters() -> None:
    rendered = choice_prompt("letter", "x", "Which is the capital of France?", CHOICES)
    assert rendered.prefix == (
        "Which is the capital of France?\nA. Berlin\nB. Paris\nC. Rome\nAnswer:"
    )
    assert rendered.continuations == [" A", " B", " C"]


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_gives_one_continuation_per_choice(template: str) -> None:
    rendered = choice_prompt(template, "p", "q", CHOICES)  # type: ignore[arg-type]
    assert len(rendered.continuations) == len(CHOICES)
    assert len(set(rendered.continuations)) == len(CHOICES)
