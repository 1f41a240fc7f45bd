"""Plan epochs: the activation plans in force (per agent, the experts it must hold loaded) under
a fleet-wide epoch that only rises. Which experts go where is decided in
controller/plan_experts.py; this module numbers and keeps what was decided."""

from __future__ import annotations

import time
from collections.abc import Container
from typing import Any

from messages.base import MAX_PLAN_EPOCH, now_s
from messages.controller import FleetPlan
from messages.plan import ActivationPlan


class Planner:
    """Keeps the current assignment and hands out a new epoch whenever it changes.

    Epochs are milliseconds since the epoch, above the previous one and above every epoch
    seen on the bus (``observe``: fleet plans, agents' telemetry), so plans stay monotone
    across restarts and takeovers. Plans carry the controller's id, incarnation and leadership
    ``term``: an agent takes a plan only above the (term, epoch) it holds.
    """

    def __init__(self, controller_id: str | None = None, incarnation: int | None = None) -> None:
        self.epoch = 0
        self.controller_id = controller_id
        self.incarnation = incarnation
        self.term: int | None = None  # the controller's leadership term, set as it takes over
        self.assignments: dict[str, list[str]] = {}
        self.agent_epochs: dict[str, int] = {}  # the epoch of the plan each agent was sent

    def observe(self, epoch: int) -> None:
        """A plan epoch seen on the bus (the retained fleet plan of an earlier controller)."""
        self.epoch = max(self.epoch, epoch)

    def _next_epoch(self) -> int:
        self.epoch = min(MAX_PLAN_EPOCH, max(self.epoch + 1, int(time.time() * 1000)))
        return self.epoch

    def replan(
        self,
        wanted: dict[str, list[str]],
        force: bool = False,
        **summary: Any,
    ) -> tuple[FleetPlan, list[ActivationPlan]] | None:
        """The fleet plan and the per-agent plans that changed, or None when nothing changed.

        ``wanted`` maps every online agent to the experts it must hold loaded (every expert it
        has, until a selection says otherwise). ``force`` hands out a new epoch and plans for
        every agent even when the sets did not change (new budgets, a takeover);
        ``summary`` goes into the fleet plan.
        """
        wanted = {agent: sorted(experts) for agent, experts in wanted.items()}
        if wanted == self.assignments and not force:
            return None
        changed = [a for a, e in wanted.items() if self.assignments.get(a) != e or force]
        self.assignments = wanted
        epoch = self._next_epoch()
        ids = dict(controller_id=self.controller_id, incarnation=self.incarnation, term=self.term)
        fleet = FleetPlan(epoch=epoch, time_s=now_s(), assignments=wanted, **ids, **summary)
        per_agent = [
            ActivationPlan(agent_id=a, epoch=epoch, experts=wanted[a], time_s=now_s(), **ids)
            for a in sorted(changed)
        ]
        self.agent_epochs.update({a: epoch for a in changed})
        return fleet, per_agent

    def plan_for(self, agent_id: str) -> ActivationPlan | None:
        """The current plan of one agent again (it reconnected and may have missed it)."""
        if agent_id not in self.assignments:
            return None
        return ActivationPlan(
            agent_id=agent_id,
            epoch=self.agent_epochs.get(agent_id, self.epoch),
            experts=self.assignments[agent_id],
            time_s=now_s(),
            controller_id=self.controller_id,
            incarnation=self.incarnation,
            term=self.term,
        )

    def active(self, online: Container[str]) -> list[tuple[str, str]]:
        """(agent_id, expert_id) pairs that are planned and on an online agent."""
        return [
            (agent, expert)
            for agent, experts in sorted(self.assignments.items())
            if agent in online
            for expert in experts
        ]
