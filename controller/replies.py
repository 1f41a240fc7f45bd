"""What an asker gets back, decided without I/O: an answer or stream chunk under the request id
the asker sent, a refusal, and which topics carry answers (those held over a dropped
connection). The controller service publishes them."""

from __future__ import annotations

from typing import TypeVar

from controller.ledger import ReplyRoute
from messages import topics
from messages.answers import Answer
from messages.stream import StreamChunk

M = TypeVar("M", Answer, StreamChunk)


def as_asked(message: M, route: ReplyRoute) -> M:
    """An answer or stream chunk as the asker on ``route`` knows it: under the request id it
    sent (a login's prompt is keyed by its scoped id, controller/request_ids.py)."""
    if route.request_id is None:
        return message
    return message.model_copy(update={"request_id": route.request_id})


def too_large(answer: Answer) -> Answer:
    """What goes out instead of an answer too large to publish."""
    return refusal(answer.request_id, "the answer is too large to publish", status="failed")


def refusal(request_id: str, reason: str, status: str = "rejected") -> Answer:
    """An answer with no expert's output: ``reason`` says why."""
    return Answer(
        request_id=request_id,
        status=status,  # type: ignore[arg-type]
        answer=None,
        experts=[],
        error=reason[:2000],
        latency_s=0.0,
    )


def is_answer(topic: str, fleet: str) -> bool:
    """Whether the controller publishes answers on ``topic``: ``answers/{id}`` or a reply
    route (under the fleet's ``replies/`` or ``answers/``, or outside the fleet), not a stream
    preview."""
    if topic.endswith("/stream"):
        return False
    prefix = f"{topics.PREFIX}/{fleet}/"
    if not topic.startswith(prefix):
        return True
    return topic[len(prefix) :].startswith(("answers/", "replies/"))
