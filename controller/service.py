"""The controller process: fleet registry, activation plans, and prompts in, answers out."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from controller import __version__
from controller.aggregate import Arrival, combine
from controller.planner import Planner
from controller.registry import Change, FleetRegistry
from controller.selection.live import BudgetError, LiveSelection
from controller.selection.solver import SelectionResult
from controller.settings import ControllerSettings
from messages import topics
from messages.answers import Answer, ExpertFailure
from messages.base import now_s
from messages.budgets import Budgets
from messages.bus import Bus, Inbound
from messages.cache_plan import CachePlan
from messages.capabilities import AgentCapabilities
from messages.controller import ControllerEvent, ControllerStatus
from messages.jobs import Job
from messages.prompts import Prompt
from messages.results import JobResult
from messages.status import AgentStatus
from messages.telemetry import Telemetry
from messages.topics import Topic

log = logging.getLogger(__name__)


class _Refused(Exception):
    """A prompt that will not be dispatched; it is answered ``failed`` with the reason."""

    def __init__(
        self, reason: str, failed: list[ExpertFailure] | None = None, rejected: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason, self.failed, self.rejected = reason, failed or [], rejected


@dataclass(frozen=True)
class ReplyRoute:
    topic: str
    correlation_data: bytes | None = None


@dataclass
class PendingRequest:
    request_id: str
    prompt: Prompt
    received: float  # time.monotonic()
    dispatched: dict[tuple[str, str], float]  # (agent_id, expert_id) -> monotonic dispatch time
    replies: list[ReplyRoute]
    failed: list[ExpertFailure]
    weights: dict[str, float] | None = None  # gate weights by expert@agent; None: uniform
    budgets: Budgets | None = None
    arrivals: dict[tuple[str, str], Arrival] = field(default_factory=dict)
    timer: threading.Timer | None = None


class Controller:
    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.registry = FleetRegistry(settings.silence_factor)
        self.planner = Planner()
        self.bus = Bus(
            settings.endpoint,
            settings.fleet,
            client_id=f"moe2-controller-{uuid.uuid4().hex[:8]}",
            keepalive_s=settings.keepalive_s,
            on_reject=self._on_reject,
        )
        self._lock = threading.RLock()
        self._pending: dict[str, PendingRequest] = {}
        self.selection: LiveSelection | None = None
        self.cache_plan: CachePlan | None = None
        self.last_selection: SelectionResult | None = None
        self.budgets = Budgets(
            energy_j=settings.energy_budget_j,
            delay_s=dict(settings.delay_budget_s),
            top_k=settings.top_k,
        )
        if settings.profile is not None and settings.gate is not None:
            from controller.selection.from_profile import load_gated_profile  # needs torch

            self.selection = LiveSelection(
                load_gated_profile(settings.profile, settings.gate),
                aggregation_delay_s=settings.aggregation_delay_s,
            )
            self.selection.gated.profile.check_fleet(settings.fleet)
            self.selection.check(self.budgets)
        self.rejected: Counter[str] = Counter()
        self.answered = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------

    def _status(self, state: str) -> ControllerStatus:
        return ControllerStatus(
            state=state,  # type: ignore[arg-type]
            version=__version__,
            time_s=now_s(),
            agents_online=len(self.registry.online_experts()),
            requests_answered=self.answered,
            rejected=dict(self.rejected),
        )

    def start(self) -> None:
        self.bus.set_will(topics.CONTROLLER_STATUS, self._status("offline"))
        self.bus.subscribe(topics.AGENT_STATUS, self._on_status)
        self.bus.subscribe(topics.AGENT_CAPABILITIES, self._on_capabilities)
        self.bus.subscribe(topics.AGENT_TELEMETRY, self._on_telemetry)
        self.bus.subscribe(topics.AGENT_RESULTS, self._on_result)
        self.bus.subscribe(topics.PROMPTS, self._on_prompt)
        self.bus.subscribe(topics.PROMPTS_TEXT, self._on_text_prompt)
        self.bus.subscribe(topics.CONTROLLER_BUDGETS, self._on_budgets)
        self.bus.subscribe(topics.CONTROLLER_CACHE_PLAN, self._on_cache_plan)
        self.bus.connect()
        self.publish_status()
        thread = threading.Thread(target=self._watch, name="controller-watch", daemon=True)
        thread.start()
        self._threads.append(thread)
        log.info(
            "controller online at %s, fleet %s", self.settings.endpoint.url, self.settings.fleet
        )

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._lock:
            pending = list(self._pending)
        for request_id in pending:
            self._finish(request_id, "controller shutting down")
        self.bus.publish(topics.CONTROLLER_STATUS, self._status("offline")).wait_for_publish(2)
        self.bus.close()

    def wait(self) -> None:
        self._stop.wait()

    def publish_status(self) -> None:
        self.bus.publish(topics.CONTROLLER_STATUS, self._status("online"))

    def _watch(self) -> None:
        last_status = time.monotonic()
        while not self._stop.wait(0.25):
            for change in self.registry.sweep():
                self._on_change(change)
            if time.monotonic() - last_status >= self.settings.status_interval_s:
                last_status = time.monotonic()
                self.publish_status()

    # -- events and plans ---------------------------------------------------------------

    def _event(self, kind: str, reason: str, **fields: Any) -> None:
        log.info("event %s: %s", kind, reason)
        event = ControllerEvent(time_s=now_s(), kind=kind, reason=reason, **fields)  # type: ignore[arg-type]
        self.bus.publish(topics.CONTROLLER_EVENTS, event)

    def _on_reject(self, topic: Topic[Any], name: str, reason: str) -> None:
        with self._lock:
            self.rejected[topic.pattern] += 1
        self._event("rejected", reason, topic=name)

    def _on_change(self, change: Change) -> None:
        kind = "agent_online" if change.online else "agent_offline"
        self._event(kind, f"agent {change.agent_id}: {change.reason}", agent_id=change.agent_id)
        self.replan()

    def _wanted(self, budgets: Budgets) -> tuple[dict[str, list[str]], dict[str, Any]]:
        """Experts each online agent must hold: all of them, or the optimal set under budgets.
        Raises BudgetError when no set fits (the caller keeps the plan it has)."""
        online = self.registry.online_experts()
        if self.cache_plan is not None:
            placement = self.cache_plan.placement
            wanted = {a: [e for e in placement.get(a, []) if e in online[a]] for a in online}
            summary = dict(
                algorithm=f"cache:{self.cache_plan.algorithm}",
                loss=None,
                energy_j=None,
                delay_s={},
            )
            return wanted, summary
        if self.selection is None:
            return self._fitting(online), {}
        keys = {f"{e}@{a}" for a, experts in online.items() for e in experts}
        result = self.selection.solve(budgets, keys)
        wanted: dict[str, list[str]] = {agent: [] for agent in online}
        for key in result.selected:
            expert, _, agent = key.partition("@")
            wanted[agent].append(expert)
        self.last_selection = result
        summary = dict(
            algorithm=result.algorithm,
            loss=result.loss,
            energy_j=result.energy_j,
            delay_s=result.delay_s,
        )
        return wanted, summary

    def replan(self, budgets: Budgets | None = None, force: bool = False) -> None:
        """Re-solve and push plans; with new ``budgets``, adopt them only if a set fits."""
        with self._lock:
            try:
                wanted, summary = self._wanted(budgets or self.budgets)
            except BudgetError as exc:
                if budgets is not None:
                    raise
                if self.registry.online_experts():
                    self._event("replan", f"keeping the current plan: {exc}")
                return
            if budgets is not None:
                self.budgets = budgets
            planned = self.planner.replan(wanted, force=force or budgets is not None, **summary)
        if planned is None:
            return
        fleet_plan, agent_plans = planned
        for plan in agent_plans:
            self.bus.publish(topics.AGENT_PLAN, plan, agent_id=plan.agent_id)
        self.bus.publish(topics.CONTROLLER_PLAN, fleet_plan)
        summary = "; ".join(
            f"{a}: {', '.join(e) or '-'}" for a, e in fleet_plan.assignments.items()
        )
        self._event("replan", f"epoch {fleet_plan.epoch}: {summary or 'no agent online'}")

    def _on_budgets(self, inbound: Inbound[Budgets]) -> None:
        if inbound.message == self.budgets:
            return  # our own retained budgets, seen again
        if self.selection is None:
            self._on_reject(
                topics.CONTROLLER_BUDGETS,
                inbound.topic,
                "budgets need a selection: start the controller with a profile and a gate",
            )
            return
        try:
            self.replan(inbound.message)
        except BudgetError as exc:
            self._on_reject(
                topics.CONTROLLER_BUDGETS, inbound.topic, f"{exc}; keeping the last good plan"
            )

    def _on_cache_plan(self, inbound: Inbound[CachePlan]) -> None:
        plan = inbound.message
        if plan == self.cache_plan:
            return  # our own retained plan, seen again
        if not plan.placement:
            if self.cache_plan is not None:
                self.cache_plan = None
                self._event("replan", "cache plan lifted")
                self.replan(force=True)
            return
        problem = self._cache_plan_problem(plan)
        if problem is not None:
            self._on_reject(
                topics.CONTROLLER_CACHE_PLAN, inbound.topic, f"{problem}; keeping the current plan"
            )
            return
        self.cache_plan = plan
        self.replan(force=True)

    def _fitting(self, online: dict[str, list[str]]) -> dict[str, list[str]]:
        """Every expert of each agent, in its configured order, as far as its memory budget
        allows (agents without a budget get them all)."""
        records = {r.agent_id: r for r in self.registry.agents()}
        wanted = {}
        for agent_id, experts in online.items():
            caps = records[agent_id].capabilities
            budget = caps.expert_memory_budget_bytes if caps else None
            if caps is None or budget is None:
                wanted[agent_id] = experts
                continue
            infos = {e.expert_id: e for e in caps.experts}
            kept, used = [], 0
            for expert in experts:
                size = infos[expert].memory_bytes or infos[expert].file_size_bytes
                if used + size <= budget:
                    kept.append(expert)
                    used += size
            wanted[agent_id] = kept
        return wanted

    def _cache_plan_problem(self, plan: CachePlan) -> str | None:
        """Why a cache plan cannot be applied: unknown agents or experts, or over a budget."""
        records = {r.agent_id: r for r in self.registry.agents()}
        for agent_id, expert_ids in plan.placement.items():
            record = records.get(agent_id)
            if record is None or record.capabilities is None:
                return f"unknown agent {agent_id!r}"
            infos = {e.expert_id: e for e in record.capabilities.experts}
            unknown = sorted(set(expert_ids) - set(infos))
            if unknown:
                return f"agent {agent_id} has no experts {unknown}"
            budget = record.capabilities.expert_memory_budget_bytes
            need = sum(infos[e].memory_bytes or infos[e].file_size_bytes for e in expert_ids)
            if budget is not None and need > budget:
                return (
                    f"agent {agent_id} would hold {need / 1e6:.0f} MB of experts, over its "
                    f"budget of {budget / 1e6:.0f} MB"
                )
        return None

    # -- fleet topics -------------------------------------------------------------------

    def _agent_matches_topic(self, inbound: Inbound[Any], agent_id: str) -> bool:
        if inbound.params.get("agent_id") == agent_id:
            return True
        self._on_reject(
            topics.AGENT_STATUS, inbound.topic, f"payload names agent {agent_id!r}, topic another"
        )
        return False

    def _on_status(self, inbound: Inbound[AgentStatus]) -> None:
        if not self._agent_matches_topic(inbound, inbound.message.agent_id):
            return
        change = self.registry.on_status(inbound.message)
        if change is not None:
            self._on_change(change)

    def _on_capabilities(self, inbound: Inbound[AgentCapabilities]) -> None:
        if not self._agent_matches_topic(inbound, inbound.message.agent_id):
            return
        self.registry.on_capabilities(inbound.message)
        self.replan()

    def _on_telemetry(self, inbound: Inbound[Telemetry]) -> None:
        if not self._agent_matches_topic(inbound, inbound.message.agent_id):
            return
        change = self.registry.on_telemetry(inbound.message)
        if change is not None:
            self._on_change(change)

    # -- prompts ------------------------------------------------------------------------

    def _reply_routes(self, inbound: Inbound[Any], reply_to: str | None) -> list[ReplyRoute]:
        """Where the asker wants the answer, refusing the fleet's own control topics: an answer
        published on, say, an agent's plan topic would be noise at best."""
        own = topics.PREFIX + f"/{self.settings.fleet}/"
        allowed = (own + "replies/", own + "answers/")
        routes = []
        for topic in (inbound.response_topic, reply_to):
            if not topic:
                continue
            if topic.startswith(own) and not topic.startswith(allowed):
                self._on_reject(
                    topics.PROMPTS, inbound.topic, f"reply topic {topic!r} is a fleet control topic"
                )
                continue
            routes.append(ReplyRoute(topic, inbound.correlation_data))
        return routes

    def _on_prompt(self, inbound: Inbound[Prompt]) -> None:
        self.handle_prompt(inbound.message, self._reply_routes(inbound, inbound.message.reply_to))

    def _on_text_prompt(self, inbound: Inbound[str]) -> None:
        replies = self._reply_routes(inbound, None)
        self.handle_prompt(
            Prompt(prompt=inbound.message, timeout_s=self.settings.default_timeout_s), replies
        )

    def _targets(self, prompt: Prompt) -> tuple[list[tuple[str, str]], list[ExpertFailure]]:
        """Active (agent, expert) pairs to ask, and the named ones that cannot be asked."""
        active = self.planner.active(self.registry.online_experts())
        if prompt.experts is None:
            return active, []
        known = self.registry.known_experts()
        chosen: list[tuple[str, str]] = []
        failed: list[ExpertFailure] = []
        for name in prompt.experts:
            expert, _, agent = name.partition("@")
            matches = sorted((a, e) for a, e in known if e == expert and (not agent or a == agent))
            if not matches:
                raise ValueError(f"unknown expert {name!r}")
            for pair in matches:
                if pair in active and pair not in chosen:
                    chosen.append(pair)
                elif pair not in active:
                    failed.append(
                        ExpertFailure(
                            agent_id=pair[0],
                            expert_id=pair[1],
                            reason="not active (offline or unplanned)",
                        )
                    )
        return chosen, failed

    def _route(
        self, prompt: Prompt
    ) -> tuple[list[tuple[str, str]], list[ExpertFailure], dict[str, float] | None, Budgets | None]:
        """Who answers a prompt: the (agent, expert) pairs, the named experts that cannot, the
        gate weights (None: uniform) and the budgets in force. Raises _Refused."""
        try:
            targets, failed = self._targets(prompt)
        except ValueError as exc:
            raise _Refused(str(exc), rejected=True) from None
        if not targets:
            raise _Refused("no active expert can answer", failed=failed)
        if self.selection is None:
            if prompt.budgets is not None:
                raise _Refused(
                    "this controller has no profile and gate, so it cannot honour budgets",
                    failed=failed,
                    rejected=True,
                )
            return targets, failed, None, None
        try:
            dispatch = self.selection.dispatch(
                prompt.prompt,
                [f"{e}@{a}" for a, e in targets],
                self.budgets.top_k,
                prompt.budgets,
                prompt.category,
            )
        except BudgetError as exc:
            raise _Refused(str(exc), failed=failed, rejected=True) from None
        if not dispatch.keys:
            raise _Refused("no active expert fits the budgets", failed=failed)
        chosen = [(k.partition("@")[2], k.partition("@")[0]) for k in dispatch.keys]
        return chosen, failed, dispatch.weights, _tighter(self.budgets, prompt.budgets)

    def handle_prompt(self, prompt: Prompt, replies: list[ReplyRoute]) -> str:
        received = time.monotonic()
        request_id = prompt.request_id or uuid.uuid4().hex[:16]
        with self._lock:
            if request_id in self._pending:
                self._event(
                    "rejected", f"request id {request_id!r} is already in use", topic="prompts"
                )
                self.rejected[topics.PROMPTS.pattern] += 1
                return request_id
            if len(self._pending) >= self.settings.max_pending_requests:
                self._answer_failure(
                    request_id, replies, received, "controller busy: too many pending requests"
                )
                return request_id
            try:
                targets, failed, weights, budgets = self._route(prompt)
            except _Refused as refusal:
                if refusal.rejected:
                    self.rejected[topics.PROMPTS.pattern] += 1
                    self._event(
                        "rejected",
                        f"request {request_id}: {refusal.reason}",
                        topic="prompts",
                        request_id=request_id,
                    )
                self._answer_failure(request_id, replies, received, refusal.reason, refusal.failed)
                return request_id
            pending = PendingRequest(
                request_id, prompt, received, {}, replies, failed, weights=weights, budgets=budgets
            )
            self._pending[request_id] = pending
            # Agents get a little less time than the asker, so late tokens still make it back.
            job_timeout = max(0.05, prompt.timeout_s - min(1.0, 0.1 * prompt.timeout_s))
            for agent_id, expert_id in targets:
                job = Job(
                    request_id=request_id,
                    expert_id=expert_id,
                    prompt=prompt.prompt,
                    choices=prompt.choices,
                    question=prompt.question,
                    max_tokens=prompt.max_tokens,
                    timeout_s=job_timeout,
                    issued_s=now_s(),
                )
                pending.dispatched[(agent_id, expert_id)] = time.monotonic()
                self.bus.publish(topics.AGENT_JOBS, job, agent_id=agent_id)
            pending.timer = threading.Timer(
                prompt.timeout_s, self._finish, args=(request_id, "deadline")
            )
            pending.timer.daemon = True
            pending.timer.start()
        return request_id

    def _on_result(self, inbound: Inbound[JobResult]) -> None:
        result = inbound.message
        if not self._agent_matches_topic(inbound, result.agent_id):
            return
        key = (result.agent_id, result.expert_id)
        with self._lock:
            pending = self._pending.get(result.request_id)
            if pending is None:
                self._event(
                    "late_result",
                    f"result from {result.expert_id}@{result.agent_id} for request "
                    f"{result.request_id}, which is not pending (late or unknown)",
                    request_id=result.request_id,
                    agent_id=result.agent_id,
                )
                return
            if key not in pending.dispatched or key in pending.arrivals:
                self._on_reject(
                    topics.AGENT_RESULTS,
                    inbound.topic,
                    f"request {result.request_id} did not ask {result.expert_id}@{result.agent_id}"
                    + (" again" if key in pending.arrivals else ""),
                )
                return
            pending.arrivals[key] = Arrival(result, time.monotonic() - pending.dispatched[key])
            complete = len(pending.arrivals) == len(pending.dispatched)
        if complete:
            self._finish(result.request_id, "complete")

    def _finish(self, request_id: str, why: str) -> None:
        with self._lock:
            pending = self._pending.pop(request_id, None)
        if pending is None:
            return  # finished already (all results in, then the timer fired)
        if pending.timer is not None:
            pending.timer.cancel()
        missing = [
            ExpertFailure(
                agent_id=agent,
                expert_id=expert,
                reason=(
                    f"no result within {pending.prompt.timeout_s:g} s" if why == "deadline" else why
                ),
            )
            for (agent, expert) in pending.dispatched
            if (agent, expert) not in pending.arrivals
        ]
        combined = combine(
            pending.prompt.choices,
            list(pending.arrivals.values()),
            pending.failed + missing,
            weights=pending.weights,
        )
        status = "ok" if not combined.failed else ("partial" if combined.experts else "failed")
        answer = Answer(
            request_id=request_id,
            status=status,
            answer=combined.answer,
            choice_index=combined.choice_index,
            choice_probs=combined.choice_probs,
            experts=combined.experts,
            failed=combined.failed,
            error=None if combined.experts else "no expert answered",
            latency_s=time.monotonic() - pending.received,
            energy_j=combined.energy_j,
            energy_estimated=any(e.energy_source == "estimate" for e in combined.experts),
            budgets=pending.budgets,
        )
        if status == "failed":
            self._event(
                "request_failed", f"request {request_id}: no expert answered", request_id=request_id
            )
        self._send(answer, pending.replies)

    def _answer_failure(
        self,
        request_id: str,
        replies: list[ReplyRoute],
        received: float,
        error: str,
        failed: list[ExpertFailure] | None = None,
    ) -> None:
        self._event("request_failed", f"request {request_id}: {error}", request_id=request_id)
        answer = Answer(
            request_id=request_id,
            status="failed",
            answer=None,
            experts=[],
            failed=failed or [],
            error=error,
            latency_s=time.monotonic() - received,
        )
        self._send(answer, replies)

    def _send(self, answer: Answer, replies: list[ReplyRoute]) -> None:
        with self._lock:
            self.answered += 1
        self.bus.publish(topics.ANSWERS, answer, request_id=answer.request_id)
        for route in replies:
            self.bus.publish_to(
                route.topic,
                answer,
                qos=topics.ANSWERS.qos,
                correlation_data=route.correlation_data,
            )


def _tighter(fleet: Budgets, prompt: Budgets | None) -> Budgets:
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
