"""Who answers a prompt: the experts it names, the gate's choice among the active set under the
budgets, or (without a gate) one replica of each active expert, least loaded; and how many jobs
an agent, or one expert on it, may hold at once.

A prompt that names experts may use any of them online on an agent that can load it (its
memory budget holds it: the agent unloads idle experts to make room), planned or not: a
newcomer being profiled answers at once. Named experts the gate does not know yet are weighed
equally with the others named (the gate cannot weigh them).

The dispatcher asks (``Router.route``, with the room of each target read at once;
``replicas``, ``capacity`` and ``slots`` when it looks for another replica) while it holds its
lock; the answers are read from the fleet registry, the plan in force, the selection and the
budgets, never from the controller service. The service installs a new selection or new budgets
here (``Router.selection``, ``Router.budgets``) and publishes what the dispatcher decides. The
decisions themselves are the module's pure functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import TYPE_CHECKING

from controller.damping import FlapDamper, ReplanTimer
from controller.decisions import fleet_coming_back, one_replica_each
from controller.dispatch import PARK_GRACE_S, Pair, Refused, Route
from controller.plan_epochs import Planner
from controller.registry import AgentRecord, FleetRegistry
from controller.selection.errors import BudgetError
from messages.answers import ExpertFailure
from messages.budgets import Budgets
from messages.expert_key import ExpertOnAgent, expert_key, parse_key, parse_name
from messages.prompts import Prompt

if TYPE_CHECKING:  # numpy and numba are imported only with a gate (controller/selection)
    from controller.selection.live import Dispatch, LiveSelection


class Router:
    """The dispatcher's view of the fleet: the registry, the plan in force, the selection and
    the budgets (both swapped by the service), and whether the fleet is on its way back."""

    def __init__(
        self,
        registry: FleetRegistry,
        planner: Planner,
        job_window: int,
        budgets: Budgets,
        selection: LiveSelection | None,
        waiting: tuple[ReplanTimer, FlapDamper],
    ) -> None:
        """``job_window``: jobs out on an agent at most when its slots say no more;
        ``waiting``: the re-plan timer and the flap damper (a re-plan on its way, or an agent
        held out, makes a prompt without experts wait)."""
        self.registry, self.planner, self.job_window = registry, planner, job_window
        self.budgets = budgets
        self.selection = selection
        self.connected_at: float | None = None  # the service's last (re)connect, monotonic
        self._replans, self._damper = waiting
        # why no active expert can answer: the live-cost loop knows when the budgets fit none
        self.no_expert_reason: Callable[[], str] = _no_expert_reason

    def active_pairs(self) -> list[tuple[str, str]]:
        """(agent, expert) planned on an online agent: a pass over the plan, not the fleet."""
        planned = list(self.planner.assignments)
        return self.planner.active(self.registry.online_among(planned))

    def loadable_pairs(self) -> list[tuple[str, str]]:
        """(agent, expert) online that the agent can load within its memory budget, planned
        or not: what a prompt naming experts may use."""
        return [
            ExpertOnAgent(record.agent_id, expert)
            for record in self.registry.agents()
            if record.online
            for expert in record.expert_ids
            if loadable(record, expert)
        ]

    def replicas(self, expert_id: str) -> list[str]:
        """The online agents where ``expert_id`` is active."""
        return [agent for agent, expert in self.active_pairs() if expert == expert_id]

    def capacity(self, agent_id: str) -> int:
        return capacity(self.registry.get(agent_id), self.job_window)

    def slots(self, agent_id: str, expert_id: str) -> int:
        return slots(self.registry.get(agent_id), expert_id, self.job_window)

    def route(self, prompt: Prompt, load: dict[str, int]) -> Route:
        """Who answers ``prompt`` (``load``: jobs out per agent); raises Refused."""
        active = self.active_pairs()
        failed: list[ExpertFailure] = []
        if prompt.experts is not None:
            usable = [*active, *self.loadable_pairs()]
            targets, failed = named(prompt.experts, usable, self.registry.known_experts())
        else:
            targets = active if self.selection is not None else one_replica_each(active, load)
        if not targets:
            raise Refused(self.no_expert_reason(), failed=failed, transient=self._coming_back())
        route = choose(prompt, targets, failed, self.selection, self.budgets)
        room = {p: (self.capacity(p.agent_id), self.slots(*p)) for p in route.targets}
        return replace(route, room=room)

    def _coming_back(self) -> bool:
        """No target now, but a re-plan on its way (agents just came back), or a flapping
        agent let back once steady, may give the prompt its experts: it waits, within its
        deadline."""
        agents = self.registry.agents()
        coming_back = fleet_coming_back(
            [a.online for a in agents],
            [a.last_heard for a in agents],
            self.connected_at,  # one attribute read: no lock (the dispatcher's is held)
            time.monotonic(),
            PARK_GRACE_S,
        )
        return coming_back or self._replans.pending or self._damper.holding


def _no_expert_reason() -> str:
    return "no active expert can answer"


def choose(
    prompt: Prompt,
    targets: list[tuple[str, str]],
    failed: list[ExpertFailure],
    selection: LiveSelection | None,
    budgets: Budgets,
) -> Route:
    """The route among ``targets``: all of them without a gate (which cannot honour a
    prompt's budgets), else the gate's choice under the budgets, weighted."""
    outside = selection is not None and any(
        expert_key(a, e) not in selection.expert_keys for a, e in targets
    )
    if outside and prompt.experts is not None:  # named, and new to the gate: equal weights
        if prompt.budgets is not None:
            raise Refused(
                "the gate does not know every expert named yet (being profiled), so it "
                "cannot honour budgets for them",
                failed=failed,
                rejected=True,
            )
        return Route([Pair(*t) for t in targets], failed, None, None)
    if selection is None:
        if prompt.budgets is not None:
            raise Refused(
                "this controller has no profile and gate, so it cannot honour budgets",
                failed=failed,
                rejected=True,
            )
        return Route([Pair(*t) for t in targets], failed, None, None)
    try:
        dispatch = selection.dispatch(
            prompt.prompt,
            [expert_key(a, e) for a, e in targets],
            budgets.top_k,
            prompt.budgets,
            prompt.category,
        )
    except BudgetError as exc:
        raise Refused(str(exc), failed=failed, rejected=True) from None
    if not dispatch.keys and prompt.budgets is not None and prompt.budgets.delay_s:
        dispatch = _on_time_best(prompt, [expert_key(a, e) for a, e in targets], selection, budgets)
    if not dispatch.keys:
        raise Refused("no active expert fits the budgets", failed=failed)
    chosen: list[Pair] = [parse_key(k) for k in dispatch.keys]
    return Route(chosen, failed, dict(dispatch.weights), tighter(budgets, prompt.budgets))


def _on_time_best(
    prompt: Prompt, keys: list[str], selection: LiveSelection, budgets: Budgets
) -> Dispatch:
    """Every expert misses the prompt's own delay budget by its estimated delay: a budget plans,
    it does not refuse. The prompt goes to the fastest of the experts its other budgets allow
    (estimated delay in its category, else its slowest category), alone; its answer comes
    within its deadline, marked late if it is. None allowed: no expert."""
    assert prompt.budgets is not None
    relaxed = prompt.budgets.model_copy(update={"delay_s": {}})
    allowed = selection.dispatch(prompt.prompt, keys, budgets.top_k, relaxed, prompt.category)
    costs = selection.gated.costs

    def delay(key: str) -> float:
        delays = costs[key].delay_s
        if prompt.category is not None and prompt.category in delays:
            return delays[prompt.category]
        return max(delays.values(), default=0.0)

    if not allowed.keys:
        return allowed
    fastest = min(allowed.keys, key=delay)
    return replace(allowed, keys=[fastest], weights={fastest: 1.0})


def named(
    names: list[str], active: Collection[tuple[str, str]], known: Collection[tuple[str, str]]
) -> tuple[list[tuple[str, str]], list[ExpertFailure]]:
    """The pairs a prompt names (``expert`` or ``expert@agent``) that are active, and those
    that are not (``known``: every pair ever served). Raises Refused (rejected) for a name no
    agent ever served."""
    chosen: list[tuple[str, str]] = []
    failed: list[ExpertFailure] = []
    for name in names:
        expert, agent = parse_name(name)
        matches = sorted(
            ExpertOnAgent(a, e) for a, e in known if e == expert and (not agent or a == agent)
        )
        if not matches:
            raise Refused(f"unknown expert {name!r}", rejected=True)
        for pair in matches:
            if pair in active and pair not in chosen:
                chosen.append(pair)
            elif pair not in active:
                failed.append(
                    ExpertFailure(
                        agent_id=pair.agent_id,
                        expert_id=pair.expert_id,
                        reason="not active (offline or unplanned)",
                    )
                )
    return chosen, failed


def loadable(record: AgentRecord, expert_id: str) -> bool:
    """Whether the agent can load ``expert_id`` within its memory budget (alone: it unloads
    idle experts to make room); True when it announces no budget or no capabilities yet."""
    caps = record.capabilities
    if caps is None or caps.expert_memory_budget_bytes is None:
        return True
    for info in caps.experts:
        if info.expert_id == expert_id:
            size = info.memory_bytes or info.file_size_bytes
            return size <= caps.expert_memory_budget_bytes
    return False


def capacity(record: AgentRecord | None, window: int) -> int:
    """Jobs outstanding on an agent at most: ``window``, or its slots (every expert's
    ``parallel``) when more, and never more than it holds (slots and queue)."""
    if record is not None and record.capabilities is not None:
        caps = record.capabilities
        total = sum(e.parallel for e in caps.experts)
        return min(max(window, total), caps.job_queue_capacity + total)
    return window


def slots(record: AgentRecord | None, expert_id: str, window: int) -> int:
    """Jobs outstanding on one expert of an agent at most: its free slots as the agent
    announces them (``parallel``), counted by the dispatcher from jobs sent and results back;
    a job beyond them waits in the controller's queue, not the agent's. Unknown: ``window``."""
    if record is not None and record.capabilities is not None:
        for expert in record.capabilities.experts:
            if expert.expert_id == expert_id:
                return expert.parallel
    return window


def tighter(fleet: Budgets, prompt: Budgets | None) -> Budgets:
    """The budgets a prompt is answered under: its own where tighter than the fleet's."""
    if prompt is None:
        return fleet

    def least(a: float | int | None, b: float | int | None) -> float | int | None:
        return b if a is None else a if b is None else min(a, b)

    delay = dict(fleet.delay_s)
    for category, limit in prompt.delay_s.items():
        delay[category] = min(limit, delay.get(category, limit))
    return Budgets(
        energy_j=least(fleet.energy_j, prompt.energy_j),
        delay_s=delay,
        top_k=least(fleet.top_k, prompt.top_k),  # type: ignore[arg-type]
    )
