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
from controller.settings import ControllerSettings
from messages import topics
from messages.answers import Answer, ExpertFailure
from messages.base import now_s
from messages.bus import Bus, Inbound
from messages.capabilities import AgentCapabilities
from messages.controller import ControllerEvent, ControllerStatus
from messages.jobs import Job
from messages.prompts import Prompt
from messages.results import JobResult
from messages.status import AgentStatus
from messages.telemetry import Telemetry
from messages.topics import Topic

log = logging.getLogger(__name__)


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

    def replan(self) -> None:
        with self._lock:
            planned = self.planner.replan(self.registry.online_experts())
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
                targets, failed = self._targets(prompt)
            except ValueError as exc:
                self.rejected[topics.PROMPTS.pattern] += 1
                self._event(
                    "rejected",
                    f"request {request_id}: {exc}",
                    topic="prompts",
                    request_id=request_id,
                )
                self._answer_failure(request_id, replies, received, str(exc))
                return request_id
            if not targets:
                self._answer_failure(
                    request_id, replies, received, "no active expert can answer", failed
                )
                return request_id
            pending = PendingRequest(request_id, prompt, received, {}, replies, failed)
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
            pending.prompt.choices, list(pending.arrivals.values()), pending.failed + missing
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
