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
class Sampling:
    """How the next token is drawn. ``temperature`` 0 is greedy (the default): the most likely
    token, and ``top_p``, ``top_k`` and ``seed`` do not matter. Otherwise the logits are divided
    by the temperature, cut to the ``top_k`` most likely (0: no cut) and to the smallest set
    holding ``top_p`` of the mass, and drawn from; the same ``seed`` draws the same tokens.
    ``stop`` strings end the text (and are cut from it), beside the expert's own."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


GREEDY = Sampling()

# Called with each new piece of generated text, in order (a streamed job's tokens).
TextSink = Callable[[str], None]
Turns = list[dict[str, str]]  # chat messages as {"role": ..., "content": ...}


def plain_transcript(messages: Turns) -> str:
    """Chat turns for a model without a chat template: one "role: content" line each, then the
    assistant's cue."""
    lines = [f"{m['role'].capitalize()}: {m['content'].strip()}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def sample_token(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """One token from a row of logits under ``sampling`` (argmax when greedy)."""
    if sampling.greedy:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / sampling.temperature
    order = np.argsort(-scaled, kind="stable")
    if 0 < sampling.top_k < len(order):
        order = order[: sampling.top_k]
    kept = scaled[order]
    probs = np.exp(kept - kept.max())
    probs /= probs.sum()
    if sampling.top_p < 1.0:
        cut = int(np.searchsorted(np.cumsum(probs), sampling.top_p)) + 1
        order, probs = order[:cut], probs[:cut] / probs[:cut].sum()
    return int(order[rng.choice(len(order), p=probs)])


class _Streamer:
    """Turns a growing generation into text pieces for a sink: held back while a stop string
    may be forming or a character is split across tokens, leading and trailing whitespace
    withheld as the final text strips it, so that the pieces add up to the final text."""

    def __init__(self, sink: TextSink | None, stop: tuple[str, ...]) -> None:
        self.sink = sink
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.sent = ""

    def update(self, text: str) -> None:
        if self.sink is None or text.endswith("\ufffd"):
            return
        body = text.lstrip()
        safe = body[: len(body) - self.hold].rstrip() if self.hold else body.rstrip()
        if len(safe) > len(self.sent) and safe.startswith(self.sent):
            piece, self.sent = safe[len(self.sent) :], safe
            self.sink(piece)

    def finish(self, final: str) -> None:
        if self.sink is not None and final.startswith(self.sent) and len(final) > len(self.sent):
            piece, self.sent = final[len(self.sent) :], final
            self.sink(piece)


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
    on_text: TextSink | None = None,
) -> Generation:
    """Take tokens from a backend's token ``stream`` (the prompt's decoding happens before its
    first token) until an end-of-generation token, a stop string, ``budget`` tokens, the
    deadline or ``cancel`` (both finish ``deadline``); the text is cut at the first stop
    string. ``on_text`` gets the text as it grows, piece by piece."""
    out: list[int] = []
    finish: Literal["stop", "length", "deadline"] = "length"
    first_token_s: float | None = None
    start = time.monotonic()
    streamer = _Streamer(on_text, stop)
    for token in stream:
        if first_token_s is None:
            first_token_s = time.monotonic() - start
        if is_eog(token):
            finish = "stop"
            break
        out.append(token)
        recent = detokenize(out[-16:]) if stop else ""
        if any(s in recent for s in stop) and _stopped(detokenize(out), stop):
            finish = "stop"
            break
        if on_text is not None:
            streamer.update(detokenize(out))
        if len(out) >= budget:
            break
        if past(deadline_s, cancel):
            finish = "deadline"
            break
    text = detokenize(out).lstrip()
    for s in stop:
        text = text.split(s, 1)[0]
    streamer.finish(text.strip())
    return Generation(
        text=text.strip(),
        prompt_tokens=prompt_tokens,
        completion_tokens=len(out),
        first_token_s=first_token_s,
        finish_reason=finish,
    )


def _stopped(text: str, stop: tuple[str, ...]) -> bool:
    """Whether a stop string has come in the answer. Whitespace before the answer begins is
    not the answer (it is stripped), so a stop string such as "\n" there does not count: chat
    models often open their turn with a newline."""
    body = text.lstrip()
    return any(s in body for s in stop)


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
        *,
        messages: Turns | None = None,
        sampling: Sampling = GREEDY,
        on_text: TextSink | None = None,
    ) -> Generation:
        """Generation (greedy unless ``sampling`` says otherwise) after ``prompt``, or after
        the chat ``messages`` rendered with the model's chat template when given; stops at
        ``max_tokens``, a stop string, or when ``time.monotonic()`` passes ``deadline_s`` or
        ``cancel`` is set (finish_reason ``deadline``). ``on_text`` gets the text as it
        grows."""

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
