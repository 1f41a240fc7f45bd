"""Chat turns, sampling options and streaming in the contract: what is taken, what is refused."""

from __future__ import annotations

import json

import pytest

from messages import topics
from messages.codec import PayloadError, decode, encode
from messages.jobs import Job
from messages.prompts import Prompt
from messages.stream import StreamChunk


def test_messages_alone_make_a_prompt_routed_on_the_last_user_turn() -> None:
    payload = json.dumps(
        {
            "messages": [
                {"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "Largest planet?"},
                {"role": "assistant", "content": "Jupiter."},
                {"role": "user", "content": "And the smallest?"},
            ],
            "temperature": 0.7,
            "seed": 7,
            "stop": ["\n"],
            "stream": True,
        }
    ).encode()
    prompt = decode(Prompt, payload)
    assert prompt.prompt == "And the smallest?"
    assert prompt.messages is not None and [m.role for m in prompt.messages][0] == "system"
    assert prompt.sampling == {
        "temperature": 0.7,
        "top_p": 1.0,
        "top_k": 0,
        "seed": 7,
        "stop": ["\n"],
    }
    assert decode(Prompt, encode(prompt)) == prompt  # the ledger's round trip


def test_greedy_is_the_default() -> None:
    prompt = Prompt(prompt="hi")
    assert (prompt.temperature, prompt.top_k, prompt.seed, prompt.stream) == (0.0, 0, None, False)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "prompt or messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "non-empty user turn"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"prompt": "p", "temperature": 3}, "temperature"),
        ({"prompt": "p", "top_p": 0}, "top_p"),
        ({"prompt": "p", "top_k": -1}, "top_k"),
        ({"prompt": "p", "seed": -2}, "seed"),
        ({"prompt": "p", "stop": [""]}, "stop strings"),
        ({"prompt": "p", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "p", "choices": ["a", "b"], "stream": True}, "stream is for free-text"),
        (
            {"messages": [{"role": "user", "content": "x"}], "choices": ["a", "b"]},
            "choices are scored after a bare prompt",
        ),
    ],
)
def test_bad_chat_and_sampling_fields_are_refused_with_a_reason(
    fields: dict[str, object], reason: str
) -> None:
    with pytest.raises(PayloadError, match=reason):
        decode(Prompt, json.dumps(fields).encode())


def test_a_job_carries_messages_and_sampling() -> None:
    job = Job(
        request_id="r",
        expert_id="e",
        prompt="hi",
        messages=[{"role": "user", "content": "hi"}],  # type: ignore[list-item]
        temperature=0.5,
        seed=3,
        stream=True,
        timeout_s=5,
        issued_s=1.0,
    )
    assert decode(Job, encode(job)) == job


def test_stream_topics() -> None:
    assert topics.AGENT_STREAM.name("lab", agent_id="a") == "moe2/lab/agents/a/stream"
    assert topics.ANSWER_STREAM.name("lab", request_id="r") == "moe2/lab/answers/r/stream"
    assert topics.ANSWERS.match("lab", "moe2/lab/answers/r/stream") is None
    assert topics.AGENT_STREAM.qos == 0 and topics.ANSWER_STREAM.message is StreamChunk
    assert (
        topics.REPLIES_STREAM.name("lab", client_id="c", request_id="r")
        == "moe2/lab/replies/c/r/stream"
    )
