"""Errors and notable happenings reported by an agent (bad input it rejected, load failures)."""

from __future__ import annotations

from typing import Literal

from messages.base import Message, TimestampS, TopicLevel


class AgentEvent(Message):
    agent_id: TopicLevel
    time_s: TimestampS
    kind: Literal["rejected", "plan_applied", "load_failed", "job_failed"]
    topic: str | None = None
    reason: str
