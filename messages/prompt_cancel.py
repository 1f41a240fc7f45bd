"""An asker's word that it no longer wants the answer to one of its prompts."""

from __future__ import annotations

from pydantic import Field

from messages.base import Message, TimestampS, TopicLevel


class PromptCancel(Message):
    """Stop answering ``request_id``: the controller cancels its jobs on their agents, answers
    it ``failed`` ("cancelled by the asker") and forgets it, so no takeover runs it again. A
    cancel for a prompt it does not hold (unknown, answered, another login's) changes nothing."""

    request_id: TopicLevel
    reason: str = Field(default="cancelled by the asker", max_length=200)
    time_s: TimestampS
