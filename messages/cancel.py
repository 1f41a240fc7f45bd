"""The controller's word that a job's answer is no longer wanted."""

from __future__ import annotations

from pydantic import Field

from messages.base import TERM_DOC, Message, Term, TimestampS, TopicLevel


class Cancel(Message):
    """Drop the job for ``request_id`` (one expert, or every expert when None): it waits in the
    queue no longer, and a running generation or scoring stops at its next token."""

    request_id: TopicLevel
    expert_id: TopicLevel | None = None
    reason: str = Field(max_length=200)
    time_s: TimestampS
    term: Term | None = Field(default=None, description=TERM_DOC)
