"""Activation plan for one agent: the experts it must hold loaded."""

from __future__ import annotations

from pydantic import Field

from messages.base import TERM_DOC, Message, PlanEpoch, Term, TimestampS, TopicLevel


class ActivationPlan(Message):
    """An agent applies a plan whose (term, epoch) is above the one it holds (a missing term
    counts as 0) and ignores any other: plans never go back, whoever sends them. A controller
    takes over with a term above every term it has seen, agents' telemetry included, so no
    stray term or epoch can wedge an agent for long."""

    agent_id: TopicLevel
    epoch: PlanEpoch = Field(description="Plans with an older epoch than the agent's are ignored")
    experts: list[TopicLevel] = Field(description="Load exactly these; unload every other expert")
    time_s: TimestampS
    controller_id: TopicLevel | None = Field(default=None, description="Who made the plan")
    incarnation: PlanEpoch | None = Field(
        default=None, description="The making controller's incarnation (its start time, ms)"
    )
    term: Term | None = Field(default=None, description=TERM_DOC)

    @property
    def order(self) -> tuple[int, int]:
        """(term, epoch): how plans compare; an agent never takes one below what it holds."""
        return (self.term or 0, self.epoch)
