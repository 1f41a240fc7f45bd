"""Tokens of a streamed generation: from an agent as they come, and relayed by the controller
for the expert that leads the ensemble, ending with the controller's final chunk, which names
the experts the answer came from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from messages.answers import Answer
from messages.base import Count, Message, TimestampS, TopicLevel
from messages.expert_key import expert_key


class StreamChunk(Message):
    """New text of one expert's generation for one request, in order (``seq`` from 0). QoS 0:
    a lost chunk is a gap in a preview, never in the answer, which follows as usual.

    The controller ends a stream it relayed with a final chunk of its own, just before the
    answer: ``done``, no text, ``answered_by`` (the experts the answer came from) and
    ``answer_status`` set, ``expert_id``/``agent_id`` the expert whose tokens were relayed.
    ``answered_by`` is None on every other chunk."""

    request_id: TopicLevel
    expert_id: TopicLevel
    agent_id: TopicLevel
    seq: Count
    text: str = Field(max_length=64_000, description="Text after the previous chunk's")
    done: bool = Field(default=False, description="The expert's last chunk")
    finish_reason: Literal["stop", "length", "deadline"] | None = None
    answered_by: list[str] | None = Field(
        default=None,
        max_length=256,
        description="On the controller's final chunk only: the experts (expert@agent) the "
        "answer came from; empty when none answered",
    )
    answer_status: Literal["ok", "partial", "failed", "busy", "rejected"] | None = Field(
        default=None, description="On the controller's final chunk only: the answer's status"
    )
    time_s: TimestampS

    @property
    def final(self) -> bool:
        """Whether this is the controller's final chunk: the stream is over, the answer follows."""
        return self.answered_by is not None

    @classmethod
    def ending(
        cls, answer: Answer, relayed: tuple[str, str], seq: int, time_s: float
    ) -> StreamChunk:
        """The controller's final chunk of a stream that relayed ``relayed`` (agent, expert)'s
        tokens up to ``seq`` - 1."""
        agent_id, expert_id = relayed
        return cls(
            request_id=answer.request_id,
            expert_id=expert_id,
            agent_id=agent_id,
            seq=seq,
            text="",
            done=True,
            answered_by=answered_by(answer),
            answer_status=answer.status,
            time_s=time_s,
        )


def answered_by(answer: Answer) -> list[str]:
    """The experts (expert@agent) an answer came from: for free text, those whose text is the
    answer (the one chosen; several when they wrote the same); for choices, every expert in
    the mixture (a weight above 0)."""
    if answer.choice_probs is not None:
        chosen = [e for e in answer.experts if e.weight > 0]
    elif answer.answer is None:
        chosen = []
    else:
        chosen = [e for e in answer.experts if e.text == answer.answer]
    return [expert_key(e.agent_id, e.expert_id) for e in chosen]
