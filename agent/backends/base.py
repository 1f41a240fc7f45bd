"""The interface every inference backend implements."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    first_token_s: float | None
    finish_reason: Literal["stop", "length", "deadline"]


@dataclass(frozen=True)
class ChoiceScores:
    """Log-probability of each choice's continuation after the prompt, and their softmax."""

    logprobs: list[float]
    probs: list[float]
    prompt_tokens: int
    first_score_s: float


def normalise_logprobs(logprobs: list[float]) -> list[float]:
    """Softmax over the choices' total log-probabilities."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


class Backend(Protocol):
    """One loaded model."""

    @property
    def memory_bytes(self) -> int | None:
        """Resident size of the model's weights and context, when known."""

    def generate(self, prompt: str, max_tokens: int, deadline_s: float) -> Generation:
        """Greedy generation; stops at ``max_tokens`` or when ``time.monotonic()`` passes
        ``deadline_s`` (finish_reason ``deadline``)."""

    def score_choices(self, prefix: str, continuations: list[str]) -> ChoiceScores:
        """Score each continuation after ``prefix`` (see agent.templates); the prefix is decoded
        once, not once per continuation."""

    def close(self) -> None:
        """Free the model."""
