"""Errors and notable happenings reported by an agent (bad input it rejected, load failures)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from messages.base import Message, TimestampS, TokenCount, TopicLevel


class AgentEvent(Message):
    agent_id: TopicLevel
    time_s: TimestampS
    kind: Literal["rejected", "plan_applied", "load_failed", "job_failed", "job_cancelled"]
    topic: str | None = None
    reason: str
    request_id: TopicLevel | None = Field(default=None, description="The job's, for job events")
    completion_tokens: TokenCount | None = Field(
        default=None, description="job_cancelled: tokens generated before it stopped"
    )
