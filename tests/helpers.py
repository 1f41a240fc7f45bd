"""Small test helpers: a recording MQTT client on the real broker (with named waits for an
answer, an agent's result, an event, a fleet plan or a message of one kind), a scripted agent that
speaks the agent's protocol (also the instant agent of benchmarks/overhead.py), and a small real
file system that a test can fill."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from messages import topics
from messages.answers import Answer
from messages.base import now_s
from messages.bus import BrokerEndpoint, Bus, Inbound
from messages.controller import ControllerEvent, FleetPlan
from messages.events import AgentEvent
from messages.jobs import Job
from messages.plan import ActivationPlan
from messages.results import JobResult
from messages.status import AgentStatus
from messages.telemetry import Telemetry
from messages.topics import Topic
from moe2.local.stand_ins import stand_in_capabilities

Behaviour = Callable[[Job], JobResult | None]
M = TypeVar("M")
Event = TypeVar("Event", AgentEvent, ControllerEvent)


class Recorder:
    """Subscribes to topics and keeps what arrives, for assertions."""

    def __init__(self, endpoint: BrokerEndpoint, fleet: str) -> None:
        self.bus = Bus(endpoint, fleet, client_id=f"rec-{uuid.uuid4().hex[:8]}")
        self.received: list[Inbound[Any]] = []
        self._cond = threading.Condition()

    def watch(self, topic: Topic[Any], **params: str) -> Recorder:
        self.bus.subscribe(topic, self._keep, **params)
        return self

    def _keep(self, inbound: Inbound[Any]) -> None:
        with self._cond:
            self.received.append(inbound)
            self._cond.notify_all()

    def __enter__(self) -> Recorder:
        self.bus.connect()
        time.sleep(0.2)  # let subscriptions settle before the test publishes
        return self

    def __exit__(self, *exc: object) -> None:
        self.bus.close()

    def wait_for(self, predicate: Callable[[Any], bool], timeout_s: float = 10.0) -> Any:
        """The first received message satisfying predicate, waiting for it if needed."""
        with self._cond:
            found: list[Any] = []

            def check() -> bool:
                found[:] = [i.message for i in self.received if predicate(i.message)]
                return bool(found)

            if not self._cond.wait_for(check, timeout_s):
                seen = [type(i.message).__name__ for i in self.received]
                raise AssertionError(f"nothing matched within {timeout_s} s; saw {seen}")
            return found[0]

    def wait_for_a(
        self, kind: type[M], where: Callable[[M], bool] | None = None, timeout_s: float = 10.0
    ) -> M:
        """The first received ``kind`` message for which ``where`` holds (any, without it)."""
        if where is not None and not callable(where):
            raise TypeError(f"where is a predicate, not {where!r}: pass timeout_s by name")
        return self.wait_for(
            lambda m: isinstance(m, kind) and (where is None or where(m)), timeout_s
        )

    def wait_for_answer(self, request_id: str | None = None, timeout_s: float = 10.0) -> Answer:
        """The Answer to ``request_id`` (the first Answer at all, without one)."""
        return self.wait_for_a(Answer, _for_request(request_id), timeout_s)

    def wait_for_result(self, request_id: str | None = None, timeout_s: float = 10.0) -> JobResult:
        """The agent's JobResult for ``request_id`` (the first one at all, without it)."""
        return self.wait_for_a(JobResult, _for_request(request_id), timeout_s)

    def wait_for_event(
        self, of: type[Event], /, mentioning: str = "", timeout_s: float = 10.0, **fields: Any
    ) -> Event:
        """The first event ``of`` that type (AgentEvent or ControllerEvent) whose reason
        contains ``mentioning`` and whose ``fields`` (``kind=``, ``agent_id=``...) are as given."""
        return self.wait_for_a(
            of,
            lambda m: mentioning in m.reason and all(getattr(m, f) == v for f, v in fields.items()),
            timeout_s,
        )

    def wait_for_plan(
        self, where: Callable[[FleetPlan], bool], timeout_s: float = 10.0
    ) -> FleetPlan:
        """The first fleet plan the controller published for which ``where`` holds."""
        return self.wait_for_a(FleetPlan, where, timeout_s)

    def messages(self, kind: type | None = None) -> list[Any]:
        with self._cond:
            return [i.message for i in self.received if kind is None or isinstance(i.message, kind)]


def _for_request(request_id: str | None) -> Callable[[Any], bool] | None:
    return None if request_id is None else (lambda m: m.request_id == request_id)


class ScriptedAgent:
    """Publishes what a real agent publishes (capabilities, status, and every ``telemetry_s``
    its telemetry with the plan epoch it holds) and answers each job with what ``behaviour``
    returns (nothing when it returns None). One expert, ``parallel`` slots."""

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        fleet: str,
        agent_id: str,
        expert: str,
        behaviour: Behaviour,
        *,
        parallel: int = 1,
        capacity: int = 4,
        telemetry_s: float | None = None,
    ) -> None:
        self.agent_id, self.expert = agent_id, expert
        self.behaviour = behaviour
        self.parallel, self.capacity, self.telemetry_s = parallel, capacity, telemetry_s
        self.jobs: list[Job] = []
        self.plans: list[ActivationPlan] = []
        self.rejected: list[str] = []  # payloads on its own topics that failed validation
        self.bus = Bus(
            endpoint,
            fleet,
            client_id=f"{agent_id}-{uuid.uuid4().hex[:6]}",
            on_reject=lambda topic, name, reason: self.rejected.append(name),
        )
        self.bus.set_will(topics.AGENT_STATUS, self.status("offline"), agent_id=agent_id)
        self.bus.subscribe(topics.AGENT_JOBS, self._on_job, agent_id=agent_id)
        self.bus.subscribe(
            topics.AGENT_PLAN, lambda i: self.plans.append(i.message), agent_id=agent_id
        )
        self._stop = threading.Event()

    def status(self, state: str) -> AgentStatus:
        return AgentStatus(
            agent_id=self.agent_id,
            state=state,  # type: ignore[arg-type]
            version="t",
            time_s=now_s(),
            keepalive_s=5,
            telemetry_interval_s=self.telemetry_s or 0.5,
        )

    def start(self) -> None:
        self.bus.connect()
        caps = stand_in_capabilities(
            self.agent_id, self.expert, parallel=self.parallel, capacity=self.capacity
        )
        self.bus.publish(topics.AGENT_CAPABILITIES, caps, agent_id=self.agent_id)
        self.bus.publish(topics.AGENT_STATUS, self.status("online"), agent_id=self.agent_id)
        if self.telemetry_s is not None:
            threading.Thread(target=self._telemetry, args=(self.telemetry_s,), daemon=True).start()

    def _telemetry(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            epoch = self.plans[-1].epoch if self.plans else None
            loaded = [self.expert] if epoch is not None else []
            self.bus.publish(
                topics.AGENT_TELEMETRY,
                Telemetry(
                    agent_id=self.agent_id,
                    time_s=now_s(),
                    memory_used_bytes=0,
                    process_rss_bytes=0,
                    queue_depth=0,
                    busy=False,
                    loaded_experts=loaded,
                    plan_epoch=epoch,
                    jobs_done=len(self.jobs),
                    jobs_failed=0,
                    slots_total=self.parallel if loaded else 0,
                ),
                agent_id=self.agent_id,
            )

    def _on_job(self, inbound: Inbound[Job]) -> None:
        self.jobs.append(inbound.message)
        result = self.behaviour(inbound.message)
        if result is not None:
            self.bus.publish(topics.AGENT_RESULTS, result, agent_id=self.agent_id)

    def stop(self) -> None:
        self._stop.set()
        self.bus.publish(topics.AGENT_STATUS, self.status("offline"), agent_id=self.agent_id)
        self.bus.close()


@contextlib.contextmanager
def small_tmpfs(folder: Path, size_kib: int = 256) -> Iterator[Path]:
    """``moe2.local.drills.small_tmpfs`` (a small real file system to fill), or the test skipped
    where this sandbox cannot mount one."""
    import pytest

    from moe2.local.drills import CannotMount
    from moe2.local.drills import small_tmpfs as mount

    with contextlib.ExitStack() as stack:
        try:
            disk = stack.enter_context(mount(folder, size_kib))
        except CannotMount as exc:
            pytest.skip(str(exc))
        yield disk


def clear_fleet(
    endpoint: BrokerEndpoint, fleet: str, controller_id: str, agents: list[str]
) -> None:
    """Clear what a test's controller and agents left retained under ``fleet``: budgets, plan,
    the fleet's configuration (a module reusing the fleet name with another gate would
    otherwise find a configuration it may not lead with), the controller's status, and each
    agent's plan, status and capabilities."""
    cleaner = Bus(endpoint, fleet, client_id=f"clean-{uuid.uuid4().hex[:6]}")
    cleaner.connect()
    for topic in (topics.CONTROLLER_BUDGETS, topics.CONTROLLER_PLAN, topics.CONTROLLER_CONFIG):
        cleaner.clear_retained(topic)
    cleaner.clear_retained(topics.CONTROLLER_STATUS, controller_id=controller_id)
    for agent_id in agents:
        for topic in (topics.AGENT_PLAN, topics.AGENT_STATUS, topics.AGENT_CAPABILITIES):
            cleaner.clear_retained(topic, agent_id=agent_id)
    time.sleep(0.3)
    cleaner.close()
