"""Sampling, chat turns and token streaming in the backends, on real SmolLM2-135M."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.backends.base import Sampling, _Streamer, greedy_generation, sample_token
from agent.backends.llama_cpp import LlamaCppBackend, LlamaOptions
from agent.models import resolve_model

CHAT = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Name three colours."},
]


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend(resolve_model("smollm2-135m"), LlamaOptions(n_ctx=256))
    yield backend
    backend.close()


def _later() -> float:
    return time.monotonic() + 60


def test_sample_token_greedy_top_k_and_seed() -> None:
    logits = np.array([0.1, 3.0, 2.9, -1.0])
    rng = np.random.default_rng(0)
    assert sample_token(logits, Sampling(), rng) == 1
    assert all(
        sample_token(logits, Sampling(temperature=1.5, top_k=1), rng) == 1 for _ in range(20)
    )
    # top_p small enough keeps only the most likely token
    assert all(
        sample_token(logits, Sampling(temperature=1.0, top_p=0.01), rng) == 1 for _ in range(20)
    )
    hot = Sampling(temperature=2.0, seed=5)
    a = [sample_token(logits, hot, np.random.default_rng(5)) for _ in range(3)]
    b = [sample_token(logits, hot, np.random.default_rng(5)) for _ in range(3)]
    assert a == b
    drawn = {sample_token(logits, Sampling(temperature=5.0), rng) for _ in range(200)}
    assert drawn == {0, 1, 2, 3}


def test_streamed_pieces_add_up_to_the_text_and_never_show_a_stop_string() -> None:
    vocab = [" Hello", ",", " wor", "ld", " STOP", " more"]
    pieces: list[str] = []
    gen = greedy_generation(
        iter(range(len(vocab))),
        prompt_tokens=3,
        budget=10,
        deadline_s=_later(),
        is_eog=lambda t: False,
        detokenize=lambda ids: "".join(vocab[i] for i in ids),
        stop=(" STOP",),
        on_text=pieces.append,
    )
    assert gen.text == "Hello, world" and gen.finish_reason == "stop"
    assert "".join(pieces) == gen.text and len(pieces) >= 2
    streamer = _Streamer(pieces.append, ())
    streamer.update("caf\ufffd")  # half a character: held back
    assert streamer.sent == ""


def test_a_stop_string_in_the_leading_whitespace_does_not_end_the_answer() -> None:
    """Gemma's chat turn opens with a newline: stop = ["\n"] must end its first line, not
    return nothing."""
    vocab = ["\n", "\n", "Tokyo", ".", "\n", "More"]
    gen = greedy_generation(
        iter(range(len(vocab))),
        prompt_tokens=3,
        budget=10,
        deadline_s=_later(),
        is_eog=lambda t: False,
        detokenize=lambda ids: "".join(vocab[i] for i in ids),
        stop=("\n",),
    )
    assert gen.text == "Tokyo." and gen.finish_reason == "stop" and gen.completion_tokens == 5


def test_seeded_sampling_repeats_and_unseeded_varies(smollm2: LlamaCppBackend) -> None:
    hot = Sampling(temperature=1.2, seed=1234)
    a = smollm2.generate("Tell me a story.", 24, _later(), sampling=hot)
    b = smollm2.generate("Tell me a story.", 24, _later(), sampling=hot)
    assert a.text == b.text and a.completion_tokens > 0
    free = Sampling(temperature=1.2)
    texts = {
        smollm2.generate("Tell me a story.", 24, _later(), sampling=free).text for _ in range(4)
    }
    assert len(texts) > 1
    greedy = [smollm2.generate("Tell me a story.", 12, _later()).text for _ in range(2)]
    assert greedy[0] == greedy[1]


def test_a_request_stop_string_cuts_the_text(smollm2: LlamaCppBackend) -> None:
    free = smollm2.generate("Count: 1, 2, 3, 4, 5, 6,", 24, _later())
    word = free.text.split()[2]
    cut = smollm2.generate(
        "Count: 1, 2, 3, 4, 5, 6,", 24, _later(), sampling=Sampling(stop=(word,))
    )
    assert cut.finish_reason == "stop" and word not in cut.text
    assert free.text.startswith(cut.text)


def test_chat_turns_go_through_the_chat_template(smollm2: LlamaCppBackend) -> None:
    pieces: list[str] = []
    chat = smollm2.generate("unused", 16, _later(), messages=CHAT, on_text=pieces.append)
    rendered = smollm2._formatter(messages=CHAT).prompt  # type: ignore[misc]
    assert "terse assistant" in rendered and "Name three colours." in rendered
    assert "unused" not in rendered  # the turns, not the bare prompt, reach the model
    assert chat.text and chat.prompt_tokens == len(smollm2._prompt_tokens("unused", CHAT))
    assert "".join(pieces) == chat.text


def test_onnx_backend_samples_and_renders_chat(smollm2_onnx: Path) -> None:
    from agent.backends.onnx_runtime import OnnxBackend, OnnxOptions

    backend = OnnxBackend(smollm2_onnx, OnnxOptions(n_ctx=256))
    try:
        hot = Sampling(temperature=1.2, seed=99)
        a = backend.generate("Tell me a story.", 12, _later(), sampling=hot)
        b = backend.generate("Tell me a story.", 12, _later(), sampling=hot)
        assert a.text == b.text and a.completion_tokens > 0
        pieces: list[str] = []
        chat = backend.generate("unused", 12, _later(), messages=CHAT, on_text=pieces.append)
        assert chat.prompt_tokens == len(backend._prompt_tokens("unused", CHAT))
        assert "".join(pieces) == chat.text
    finally:
        backend.close()
