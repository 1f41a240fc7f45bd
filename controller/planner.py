"""Activation plans: per agent, the experts it must hold loaded, with a fleet-wide epoch."""

from __future__ import annotations

import time
from typing import Any

from messages.base import now_s
from messages.controller import FleetPlan
from messages.plan import ActivationPlan


class Planner:
    """Keeps the current assignment and hands out a new epoch whenever it changes.

    Epochs are milliseconds since the epoch (and always above the previous one), so a restarted
    controller's plans are never older than those the agents already hold.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.assignments: dict[str, list[str]] = {}

    def _next_epoch(self) -> int:
        self.epoch = max(self.epoch + 1, int(time.time() * 1000))
        return self.epoch

    def replan(
        self,
        wanted: dict[str, list[str]],
        force: bool = False,
        **summary: Any,
    ) -> tuple[FleetPlan, list[ActivationPlan]] | None:
        """The fleet plan and the per-agent plans that changed, or None when nothing changed.

        ``wanted`` maps every online agent to the experts it must hold loaded (every expert it
        has, until a selection says otherwise). ``force`` hands out a new epoch even when the
        sets did not change (new budgets were accepted); ``summary`` goes into the fleet plan.
        """
        wanted = {agent: sorted(experts) for agent, experts in wanted.items()}
        if wanted == self.assignments and not force:
            return None
        changed = [a for a, e in wanted.items() if self.assignments.get(a) != e or force]
        self.assignments = wanted
        epoch = self._next_epoch()
        fleet = FleetPlan(epoch=epoch, time_s=now_s(), assignments=wanted, **summary)
        per_agent = [
            ActivationPlan(agent_id=a, epoch=epoch, experts=wanted[a], time_s=now_s())
            for a in sorted(changed)
        ]
        return fleet, per_agent

    def active(self, online: dict[str, list[str]]) -> list[tuple[str, str]]:
        """(agent_id, expert_id) pairs that are planned and on an online agent."""
        return [
            (agent, expert)
            for agent, experts in sorted(self.assignments.items())
            if agent in online
            for expert in experts
        ]
