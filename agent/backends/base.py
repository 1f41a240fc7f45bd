"""The interface every inference backend implements."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np


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


class BackendUnavailable(RuntimeError):
    """The inference engine an expert asks for is not installed (or installed twice)."""


class PromptTooLong(ValueError):
    """The prompt does not fit the expert's context window."""


class DeadlineExceeded(TimeoutError):
    """Choice scoring passed its deadline (or was cancelled) before every choice was scored."""


def past(deadline_s: float | None, stop: threading.Event | None) -> bool:
    """Whether work with this monotonic deadline and cancel event must stop now."""
    if stop is not None and stop.is_set():
        return True
    return deadline_s is not None and time.monotonic() >= deadline_s


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis."""
    top = logits.max(axis=-1, keepdims=True)
    shifted = logits - top
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def greedy_generation(
    stream: Iterable[int],
    *,
    prompt_tokens: int,
    budget: int,
    deadline_s: float,
    is_eog: Callable[[int], bool],
    detokenize: Callable[[list[int]], str],
    stop: tuple[str, ...] = (),
    cancel: threading.Event | None = None,
) -> Generation:
    """Take tokens from a backend's greedy ``stream`` (the prompt's decoding happens before its
    first token) until an end-of-generation token, a stop string, ``budget`` tokens, the
    deadline or ``cancel`` (both finish ``deadline``); the text is cut at the first stop
    string."""
    out: list[int] = []
    finish: Literal["stop", "length", "deadline"] = "length"
    first_token_s: float | None = None
    start = time.monotonic()
    for token in stream:
        if first_token_s is None:
            first_token_s = time.monotonic() - start
        if is_eog(token):
            finish = "stop"
            break
        out.append(token)
        if stop and any(s in detokenize(out[-16:]) for s in stop):
            finish = "stop"
            break
        if len(out) >= budget:
            break
        if past(deadline_s, cancel):
            finish = "deadline"
            break
    text = detokenize(out)
    for s in stop:
        text = text.split(s, 1)[0]
    return Generation(
        text=text.strip(),
        prompt_tokens=prompt_tokens,
        completion_tokens=len(out),
        first_token_s=first_token_s,
        finish_reason=finish,
    )


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

    @property
    def quantisation(self) -> str | None:
        """The weights' number format (``Q4_K_M``, ``float32 (from Q4_1)``), when known."""

    @property
    def context_length(self) -> int:
        """Tokens of context the loaded model holds."""

    @property
    def uses_chat_template(self) -> bool:
        """Whether free-text prompts are wrapped in the model's chat template."""

    @property
    def providers(self) -> list[str] | None:
        """ONNX Runtime: the execution providers the session really runs on; else None."""

    def generate(
        self,
        prompt: str,
        max_tokens: int,
        deadline_s: float,
        cancel: threading.Event | None = None,
    ) -> Generation:
        """Greedy generation; stops at ``max_tokens``, or when ``time.monotonic()`` passes
        ``deadline_s`` or ``cancel`` is set (finish_reason ``deadline``)."""

    def score_choices(
        self,
        prefix: str,
        continuations: list[str],
        deadline_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> ChoiceScores:
        """Score each continuation after ``prefix`` (see agent.templates); the prefix is decoded
        once, not once per continuation. Raises DeadlineExceeded when the deadline passes or
        ``cancel`` is set before the last choice is scored."""

    def close(self) -> None:
        """Free the model."""
