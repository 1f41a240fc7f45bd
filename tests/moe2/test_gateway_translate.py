"""The gateway's pure OpenAI <-> moe2 translation, without a fleet: request bodies to prompts,
answers to responses and server-sent events, and the errors they stand for."""

from __future__ import annotations

import json

import pytest

from messages.answers import Answer, ExpertFailure, ExpertOutput
from messages.stream import StreamChunk
from moe2.gateway.errors import GatewayError
from moe2.gateway.translate import Relayed, Reply, answer_error, request_prompt

ACTIVE = {"smollm2": ["a1", "a2"]}


def _answer(text: str | None = "Paris.", status: str = "ok", **extra: object) -> Answer:
    experts = [] if text is None else [_output(text)]
    return Answer.model_validate(
        {
            "request_id": "r1",
            "status": status,
            "answer": text,
            "experts": experts,
            "latency_s": 0.5,
            **extra,
        }
    )


def _output(text: str, tokens: int = 3) -> ExpertOutput:
    return ExpertOutput(
        expert_id="smollm2",
        agent_id="a1",
        weight=1.0,
        text=text,
        latency_s=0.4,
        agent_latency_s=0.3,
        compute_s=0.2,
        completion_tokens=tokens,
        prompt_tokens=7,
    )


def _body(**fields: object) -> bytes:
    return json.dumps(
        {"model": "moe2", "messages": [{"role": "user", "content": "hi"}], **fields}
    ).encode()


def _refused(raw: bytes, chat: bool = True) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        request_prompt(raw, chat, 60.0, ACTIVE)
    return caught.value


def test_a_chat_body_becomes_a_prompt_with_the_fleet_fields() -> None:
    raw = _body(
        max_tokens=20, seed=3, stop="\n", moe2={"energy_j": 5, "delay_s": 2, "category": "qa"}
    )
    _, prompt = request_prompt(raw, True, 60.0, ACTIVE)
    assert prompt.messages is not None and prompt.messages[0].content == "hi"
    assert (prompt.max_tokens, prompt.seed, prompt.stop, prompt.category) == (20, 3, ["\n"], "qa")
    assert prompt.budgets is not None and prompt.budgets.delay_s == {"qa": 2.0}
    assert prompt.experts is None and prompt.timeout_s == 60.0


def test_a_named_model_is_one_expert_and_must_be_active() -> None:
    _, prompt = request_prompt(_body(model="smollm2@a2"), True, 60.0, ACTIVE)
    assert prompt.experts == ["smollm2@a2"]
    assert _refused(_body(model="smollm2@a3")).status == 404
    assert _refused(_body(model="other")).code == "model_not_found"


def test_text_completions_default_to_16_tokens_and_one_prompt() -> None:
    _, prompt = request_prompt(b'{"model": "moe2", "prompt": "Once"}', False, 60.0, ACTIVE)
    assert (prompt.prompt, prompt.max_tokens) == ("Once", 16)
    assert _refused(b'{"model": "moe2", "prompt": ["a", "b"]}', chat=False).param == "prompt"


def test_bad_bodies_are_400s_that_name_the_field() -> None:
    assert _refused(b"{").message == "the body is not valid JSON"
    assert _refused(_body(n=2)).param == "n"
    assert _refused(_body(tools=[{"type": "function"}])).param == "tools"
    assert _refused(_body(messages=[{"role": "tool", "content": "x"}])).param == "messages.0.role"
    assert _refused(_body(moe2={"delay_s": 2})).param == "moe2"


def test_answers_that_carry_none_are_errors_in_openai_shape() -> None:
    assert answer_error(_answer()) is None
    busy = answer_error(_answer(None, "busy", retry_after_s=2.4, error="queue full"))
    assert busy is not None and (busy.status, busy.headers) == (429, {"Retry-After": "2"})
    failed = _answer(
        None, "failed", failed=[ExpertFailure(expert_id="e", agent_id="a", reason="oom")]
    )
    error = answer_error(failed)
    assert error is not None and error.status == 503
    assert error.body()["error"]["message"] == "no expert answered (e@a: oom)"
    late = _answer(None, "failed", error="deadline passed")
    assert (answer_error(late) or GatewayError(0, "")).status == 504


def test_a_whole_chat_response_has_usage_and_the_breakdown() -> None:
    reply = Reply("chatcmpl-1", 100, "moe2", chat=True, max_tokens=3)
    body = reply.whole(_answer())
    assert body["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "Paris."},
        "finish_reason": "length",
    }
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert body["moe2"]["experts"][0]["agent_id"] == "a1"


def test_a_stream_relays_each_token_once_then_the_rest_and_the_usage() -> None:
    relayed = Relayed()
    chunks = [
        StreamChunk(request_id="r1", expert_id="e", agent_id="a", seq=s, text=t, time_s=1.0)
        for s, t in [(0, "Pa"), (0, "Pa"), (1, ""), (2, "ri")]
    ]
    assert [relayed.take(c) for c in chunks] == ["Pa", None, None, "ri"]
    reply = Reply("cmpl-1", 100, "moe2", chat=False, max_tokens=16, include_usage=True)
    events = [e.decode() for e in reply.closing(_answer(), relayed.sent)]
    assert events[0].startswith("data: ") and events[0].endswith("\n\n")
    rest, final, tail = (json.loads(e[len("data: ") :]) for e in events)
    assert rest["choices"][0]["text"] == "s."
    assert final["choices"][0]["finish_reason"] == "stop" and final["moe2"]["answer"] == "Paris."
    assert tail["choices"] == [] and tail["usage"]["total_tokens"] == 10
