"""How a stream ends, without a fleet: the controller's final chunk names the experts the answer
came from, and the gateway's last event says whether the content it streamed is the answer."""

from __future__ import annotations

import json

from messages.answers import Answer, ExpertOutput
from messages.stream import StreamChunk, answered_by
from moe2.gateway.translate import Relayed, Reply


def _output(
    agent: str, text: str | None, weight: float, probs: list[float] | None = None
) -> ExpertOutput:
    return ExpertOutput(
        expert_id="smollm2", agent_id=agent, weight=weight, text=text, choice_probs=probs,
        latency_s=0.4, agent_latency_s=0.3, compute_s=0.2, completion_tokens=3, prompt_tokens=7,
    )  # fmt: skip


def _answer(text: str | None, *experts: ExpertOutput, **extra: object) -> Answer:
    return Answer(request_id="r1", status="ok", answer=text, experts=list(experts),
                  latency_s=0.5, **extra)  # type: ignore[arg-type]  # fmt: skip


def _chunk(agent: str, seq: int, text: str) -> StreamChunk:
    return StreamChunk(request_id="r1", expert_id="smollm2", agent_id=agent, seq=seq, text=text,
                       time_s=1.0)  # fmt: skip


def test_answered_by_names_the_text_chosen_or_the_mixture() -> None:
    free = _answer("Rome", _output("a1", "Rome", 0.6), _output("a2", "Paris", 0.4))
    assert answered_by(free) == ["smollm2@a1"]
    same = _answer("Rome", _output("a1", "Rome", 0.5), _output("a2", "Rome", 0.5))
    assert answered_by(same) == ["smollm2@a1", "smollm2@a2"]
    mixed = _answer(
        "Rome", _output("a1", None, 0.7, [0.9, 0.1]), _output("a2", None, 0.3, [0.2, 0.8]),
        choice_index=0, choice_probs=[0.69, 0.31],
    )  # fmt: skip
    assert answered_by(mixed) == ["smollm2@a1", "smollm2@a2"]
    assert answered_by(_answer(None)) == []


def test_the_final_chunk_is_done_names_who_answered_and_only_it_is_final() -> None:
    answer = _answer("Rome", _output("a1", "Rome", 1.0))
    final = StreamChunk.ending(answer, ("a2", "smollm2"), 4, 2.0)
    assert final.final and final.done and final.text == "" and final.seq == 4
    assert (final.agent_id, final.answered_by, final.answer_status) == ("a2", ["smollm2@a1"], "ok")
    expert_done = _chunk("a2", 3, "is").model_copy(update={"done": True})
    assert not expert_done.final  # an expert's last chunk is not the stream's end
    assert StreamChunk.model_validate_json(final.model_dump_json()) == final
    old = {k: v for k, v in json.loads(expert_done.model_dump_json()).items()
           if k not in ("answered_by", "answer_status")}  # fmt: skip
    assert StreamChunk.model_validate(old) == expert_done  # payloads without them stay valid


def _final_event(relayed: Relayed, answer: Answer) -> tuple[list[str], dict[str, object]]:
    reply = Reply("chatcmpl-1", 100, "moe2", chat=True, max_tokens=16)
    events = [
        json.loads(e.decode()[len("data: ") :])
        for e in reply.closing(answer, relayed.sent, relayed.source)
    ]
    content = [e["choices"][0]["delta"].get("content") for e in events[:-1]]
    return [c for c in content if c], events[-1]["moe2"]


def test_the_last_event_says_the_stream_is_the_answer_when_it_adds_up() -> None:
    relayed = Relayed()
    for chunk in (_chunk("a1", 0, "Ro"), _chunk("a1", 1, "m")):
        relayed.take(chunk)
    rest, extra = _final_event(relayed, _answer("Rome", _output("a1", "Rome", 1.0)))
    assert rest == ["e"] and relayed.sent + "".join(rest) == extra["answer"] == "Rome"
    assert extra["streamed"] == "smollm2@a1" and extra["answered_by"] == ["smollm2@a1"]
    assert extra["stream_is_answer"] is True


def test_the_last_event_says_so_when_the_answer_came_from_another_expert() -> None:
    relayed = Relayed()
    relayed.take(_chunk("a2", 0, "Par"))
    answer = _answer("Rome", _output("a1", "Rome", 0.5), _output("a2", None, 0.5))
    rest, extra = _final_event(relayed, answer)
    assert rest == []  # a stream cannot take back what it sent: no more content
    assert extra["streamed"] == "smollm2@a2" and extra["answered_by"] == ["smollm2@a1"]
    assert extra["stream_is_answer"] is False and extra["answer"] == "Rome"
