"""Fault drills: a real local fleet (Mosquitto, agents serving SmolLM2, controllers, all
separate processes), prompts flowing from a client that counts what comes back, and the
faults a fleet meets in the field: a broker restarted, a controller or an agent killed or
frozen, a burst; and the live loop's drill, an agent slowed for real under delay budgets
(``slowed_expert``: planned away and back, no prompt failed, late answers marked).
``tests/moe2/test_faults.py`` and ``tests/moe2/test_slowed_expert.py`` assert on the reports;
``benchmarks/faults.py`` prints them.

The client behaves as the contract asks of one: each prompt has its own request id and is
published again after a reconnect and every ``resend_s`` until answered (the controller takes
the same prompt once). A prompt is *asked* when the broker acknowledged one of its publishes
(PUBACK); one it never acknowledged (published into a broker going down) is counted apart, as
*unacknowledged*. An asked prompt is *lost* when no answer ever comes; *duplicated* when two
different answers come for one request id.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import socket
import statistics
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from messages import topics
from messages.answers import Answer
from messages.base import Message, now_s
from messages.budgets import Budgets
from messages.bus import BrokerEndpoint, Bus, Inbound
from messages.capabilities import AgentCapabilities
from messages.controller import ControllerEvent, ControllerStatus, FleetPlan
from messages.costs import CostTable, ExpertCostRow
from messages.expert_key import agent_of, expert_key
from messages.plan import ActivationPlan
from messages.prompts import Prompt
from messages.status import AgentStatus
from messages.telemetry import Telemetry
from moe2.client.ask import Asker, new_request_id
from moe2.local.broker import LocalBroker, free_port, start_mosquitto
from moe2.local.fleet import AgentSpec, LocalFleet, wait_until
from moe2.local.stand_ins import stand_in_capabilities

SMOLLM2 = {"id": "smollm2", "model": "smollm2-135m", "n_ctx": 512, "n_threads": 1}
GEMMA3 = {"id": "gemma3", "model": "gemma3-270m", "n_ctx": 512, "n_threads": 1, "stop": ["\n"]}
CHOICE = ("The capital of France is", ["Paris", "Rome"])


@dataclass
class _Asked:
    prompt: Prompt
    sent_at: float
    answers: list[Answer] = field(default_factory=list)
    answered_at: float | None = None

    @property
    def request_id(self) -> str:
        return self.prompt.request_id or ""


@dataclass
class Report:
    """What one drill counted."""

    name: str
    asked: int
    answered: int
    lost: int
    duplicated: int
    statuses: dict[str, int]
    latencies_s: list[float]
    figures: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # why each answer that is not ok says so
    unacknowledged: int = 0  # published, never acknowledged by the broker: not asked
    unacknowledged_answered: int = 0  # of those, answered all the same
    notes: list[str] = field(default_factory=list)  # what the drill saw besides the answers

    def p(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ranked = sorted(self.latencies_s)
        return ranked[min(len(ranked) - 1, int(q * len(ranked)))]

    @property
    def p50_s(self) -> float:
        return statistics.median(self.latencies_s) if self.latencies_s else float("nan")

    def line(self) -> str:
        extra = " ".join(f"{k}={v:.2f}" for k, v in self.figures.items())
        return (
            f"{self.name}: asked {self.asked}, answered {self.answered}, lost {self.lost}, "
            f"duplicated {self.duplicated}, statuses {dict(self.statuses)}, "
            f"p50 {self.p50_s:.2f} s, p99 {self.p(0.99):.2f} s {extra}".rstrip()
            + (
                f"; unacknowledged {self.unacknowledged} ({self.unacknowledged_answered} answered)"
                if self.unacknowledged
                else ""
            )
            + "".join(f"\n  {problem}" for problem in self.problems)
            + "".join(f"\n  {note}" for note in self.notes)
        )


class Traffic:
    """The drills' client: an :class:`~moe2.client.ask.Asker` (its own reply route, re-sends,
    PUBACKs) whose every answer is counted, for the drill's verdicts. It re-sends every
    unanswered prompt after a reconnect and every ``resend_s``; with ``resend_s=None`` it is a
    one-shot publisher (``mosquitto_pub``): each prompt is published once, never again, not
    even after a reconnect.

    ``durable``: it listens with a persistent session (``mosquitto_sub -c -i ID -q 1``), so the
    broker keeps its reply subscription and queues the answers published while it is away,
    as docs/reliability.md asks of a one-shot asker.
    """

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        fleet: str,
        resend_s: float | None = 3.0,
        durable: bool = False,
    ) -> None:
        self.fleet = fleet
        self.name = f"drill-{uuid.uuid4().hex[:8]}"
        self.asked: dict[str, _Asked] = {}
        self.started = time.monotonic()
        self._lock = threading.Condition()
        self.asker = Asker(
            endpoint,
            fleet,
            client_id=self.name,
            resend_s=resend_s,
            durable=durable,
            keep_resending=True,
            on_every_answer=self._on_answer,
        )

    def __enter__(self) -> Traffic:
        self.asker.__enter__()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.asker.__exit__(*exc)

    def send(self, prompt: Prompt) -> str:
        """Publish a prompt (not waiting for the broker: it may be away)."""
        request_id = prompt.request_id or new_request_id()
        prompt = prompt.model_copy(update={"request_id": request_id})
        with self._lock:  # before it goes: its answer may come at once
            self.asked[request_id] = _Asked(prompt, time.monotonic())
        return self.asker.send(prompt, wait_s=0)

    def retry_every(self, delay_s: float) -> None:
        """After losing the broker, try it again every ``delay_s`` (the fleet's services: from
        1 s doubling to 2 s), to come back before or after them."""
        self.asker.bus.client.reconnect_delay_set(delay_s, delay_s)

    def _on_answer(self, answer: Answer) -> None:
        with self._lock:
            asked = self.asked.get(answer.request_id)
            if asked is None:
                return
            if all(a != answer for a in asked.answers):
                asked.answers.append(answer)
            if asked.answered_at is None:
                asked.answered_at = time.monotonic()
            self._lock.notify_all()

    def wait_all(self, timeout_s: float) -> bool:
        with self._lock:
            return self._lock.wait_for(
                lambda: all(a.answers for a in self.asked.values()), timeout_s
            )

    def first_answers(self) -> list[Answer]:
        """The first answer to each prompt answered."""
        with self._lock:
            return [a.answers[0] for a in self.asked.values() if a.answers]

    def first_answer_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first answer that came after it."""
        with self._lock:
            times = [a.answered_at for a in self.asked.values() if a.answered_at is not None]
        later = [t for t in times if t >= moment]
        return min(later) - moment if later else None

    def latency_of_first_sent_after(self, moment: float) -> float:
        """Seconds the first prompt sent at or after ``moment`` waited for its answer (NaN if
        none came)."""
        with self._lock:
            later = [a for a in self.asked.values() if a.sent_at >= moment]
        first = min(later, key=lambda a: a.sent_at, default=None)
        if first is None or first.answered_at is None:
            return float("nan")
        return first.answered_at - first.sent_at

    def report(self, name: str, **figures: float) -> Report:
        with self._lock:
            everything = list(self.asked.values())
        acknowledged = [a for a in everything if self.asker.acknowledged(a.request_id)]
        unacknowledged = [a for a in everything if not self.asker.acknowledged(a.request_id)]
        report = _report(name, acknowledged, **figures)
        report.problems += [
            f"{a.request_id} lost (sent {a.sent_at - self.started:.1f} s in)"
            for a in acknowledged
            if not a.answers
        ]
        report.unacknowledged = len(unacknowledged)
        report.unacknowledged_answered = sum(1 for a in unacknowledged if a.answers)
        return report


def _report(name: str, items: list[_Asked], **figures: float) -> Report:
    """What a client counted of the prompts it asked."""
    statuses = Counter(a.answers[0].status for a in items if a.answers)
    return Report(
        name=name,
        asked=len(items),
        answered=sum(1 for a in items if a.answers),
        lost=sum(1 for a in items if not a.answers),
        duplicated=sum(1 for a in items if len(a.answers) > 1),
        statuses=dict(statuses),
        latencies_s=[a.answered_at - a.sent_at for a in items if a.answered_at is not None],
        figures=dict(figures),
        problems=[
            _problem(a.answers[0]) for a in items if a.answers and a.answers[0].status != "ok"
        ],
    )


def _problem(answer: Answer) -> str:
    failed = "; ".join(f"{expert_key(f.agent_id, f.expert_id)}: {f.reason}" for f in answer.failed)
    return f"{answer.request_id} {answer.status}: {answer.error or ''} {failed}".strip()


def choice_prompt(timeout_s: float = 60.0) -> Prompt:
    text, choices = CHOICE
    return Prompt(prompt=text, choices=choices, timeout_s=timeout_s)


def text_prompt(max_tokens: int = 16, timeout_s: float = 60.0) -> Prompt:
    return Prompt(prompt="Name three colours.", max_tokens=max_tokens, timeout_s=timeout_s)


def flow(traffic: Traffic, make: Callable[[], Prompt], every_s: float, for_s: float) -> None:
    """Send one prompt every ``every_s`` for ``for_s`` seconds."""
    end = time.monotonic() + for_s
    while time.monotonic() < end:
        traffic.send(make())
        time.sleep(every_s)


@dataclass
class Drill:
    """A broker on a fixed port (so it can be restarted), a fleet on it, and its folder."""

    workdir: Path
    persistence: bool = False
    port: int = field(default_factory=free_port)
    broker: LocalBroker | None = None
    fleet: LocalFleet | None = None

    def start_broker(self) -> LocalBroker:
        data = self.workdir / "broker-data" if self.persistence else None
        self.broker = start_mosquitto(
            self.port, log_file=self.workdir / "mosquitto.log", persistence_dir=data
        )
        return self.broker

    def stop_broker(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def start_fleet(
        self,
        name: str,
        agents: list[AgentSpec],
        controllers: tuple[str, ...] = ("c1",),
        controller_args: list[str] | None = None,
        keepalive_s: int = 4,
        ready_s: float | None = 180.0,
    ) -> LocalFleet:
        """The fleet, started; with ``ready_s``, waited for (``LocalFleet.wait_ready``)."""
        assert self.broker is not None
        self.fleet = LocalFleet(
            self.broker.endpoint, name, self.workdir, keepalive_s, telemetry_interval_s=0.5
        )
        for controller in controllers:
            self.fleet.start_controller(controller, controller_args)
        for spec in agents:
            self.fleet.start_agent(spec)
        if ready_s is not None:
            self.fleet.wait_ready([s.agent_id for s in agents], timeout_s=ready_s)
        return self.fleet

    def traffic(self, resend_s: float | None = 3.0, durable: bool = False) -> Traffic:
        """A client on the fleet; ``resend_s=None``: a one-shot publisher (see Traffic)."""
        assert self.fleet is not None
        return Traffic(self.fleet.endpoint, self.fleet.fleet, resend_s, durable)

    def close(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        self.stop_broker()


def _agents(*ids: str, model: dict[str, Any] = SMOLLM2) -> list[AgentSpec]:
    return [AgentSpec(agent_id, [model]) for agent_id in ids]


# -- the scenarios --------------------------------------------------------------------------


def broker_restarts(
    workdir: Path,
    persistence: bool,
    restarts: int = 2,
    one_shot: bool = False,
    durable: bool = True,
) -> Report:
    """Prompts every 0.5 s while the broker is stopped (SIGTERM) and started again twice.

    ``one_shot``: from a client that publishes each prompt once (``mosquitto_pub``) and
    listens for its answers with a persistent session (``mosquitto_sub -c``; a clean one
    unless ``durable``). A longer prompt is in flight at each stop. The client is back before
    the controller after the first restart (its prompts wait in the controller's session) and
    after the fleet after the second (answers wait in its own): it retries every 2.6 s, then
    4 s, the fleet's services at 1 s and 3 s. Counted: the prompts the broker acknowledged
    (PUBACK); the others apart.
    """
    drill = Drill(workdir, persistence)
    drill.start_broker()
    recoveries = []
    try:
        drill.start_fleet("drill-broker", _agents("b-a", "b-b"))
        traffic = drill.traffic(resend_s=None, durable=durable) if one_shot else drill.traffic()
        with traffic:
            sender = threading.Thread(
                target=flow, args=(traffic, choice_prompt, 0.5, 6.0 * restarts + 4.0)
            )
            sender.start()
            for index in range(restarts):
                time.sleep(1.8)
                if one_shot:
                    traffic.retry_every(2.6 if index % 2 == 0 else 4.0)
                    traffic.send(text_prompt(max_tokens=48))
                time.sleep(0.2)
                drill.stop_broker()
                time.sleep(2.0)
                drill.start_broker()
                back = time.monotonic()
                time.sleep(2.0)
                recoveries.append(back)
            sender.join()
            traffic.wait_all(90)
            waits = [traffic.first_answer_after(b) for b in recoveries]
            recovery = max((w for w in waits if w is not None), default=float("nan"))
            kind = "persistent" if persistence else "no persistence"
            client = ""
            if one_shot:
                client = f", one-shot client, {'persistent' if durable else 'clean'} session"
            return traffic.report(f"broker restarts ({kind}{client})", recovery_s=recovery)
    finally:
        drill.close()


def controller_killed(workdir: Path, down_s: float = 5.0) -> Report:
    """The controller SIGKILLed with prompts in flight, started again ``down_s`` later; prompts
    keep coming while it is down."""
    drill = Drill(workdir)
    drill.start_broker()
    try:
        fleet = drill.start_fleet("drill-ctl", _agents("c-a"))
        with drill.traffic() as traffic:
            for _ in range(6):
                traffic.send(text_prompt(max_tokens=24))
            time.sleep(0.3)
            fleet.kill("c1", signal.SIGKILL)
            flow(traffic, choice_prompt, 0.5, down_s)
            fleet.start_controller("c1")
            back = time.monotonic()
            traffic.wait_all(90)
            return traffic.report(
                "controller killed and restarted",
                recovery_s=traffic.first_answer_after(back) or float("nan"),
            )
    finally:
        drill.close()


def standby_takeover(workdir: Path) -> tuple[Report, Report]:
    """Two controllers: every prompt answered once; then the active one SIGKILLed."""
    drill = Drill(workdir)
    drill.start_broker()
    try:
        fleet = drill.start_fleet("drill-ha", _agents("h-a"), controllers=("c1",))
        plans: list[FleetPlan] = []
        watcher = Bus(fleet.endpoint, fleet.fleet, client_id=f"moe2-plans-{uuid.uuid4().hex[:8]}")
        watcher.subscribe(topics.CONTROLLER_PLAN, lambda i: plans.append(i.message))
        watcher.connect()
        fleet.start_controller("c2")
        time.sleep(2.0)  # c2 hears c1 active and waits as the standby
        with drill.traffic() as traffic:
            flow(traffic, choice_prompt, 0.2, 4.0)
            traffic.wait_all(60)
            both = traffic.report("two controllers")
        with drill.traffic() as traffic:
            for _ in range(5):
                traffic.send(text_prompt(max_tokens=24))
            time.sleep(0.3)
            killed = time.monotonic()
            fleet.kill("c1", signal.SIGKILL)
            flow(traffic, choice_prompt, 0.5, 4.0)
            traffic.wait_all(90)
            epochs = [p.epoch for p in plans]
            takeover = traffic.report(
                "active controller killed",
                takeover_s=traffic.first_answer_after(killed) or float("nan"),
                # 1 when the fleet plan's epoch only grew and c2 published plans after c1
                epochs_monotone=float(epochs == sorted(epochs) and len(set(epochs)) == len(epochs)),
                plans_by_c2=float(sum(p.controller_id == "c2" for p in plans)),
            )
        watcher.close()
        return both, takeover
    finally:
        drill.close()


def agent_killed(workdir: Path) -> Report:
    """Two agents serving the same expert, 20 prompts in flight, one SIGKILLed."""
    drill = Drill(workdir)
    drill.start_broker()
    try:
        fleet = drill.start_fleet("drill-agent", _agents("r-a", "r-b"))
        with drill.traffic() as traffic:
            for _ in range(20):
                traffic.send(text_prompt(max_tokens=16))
            time.sleep(1.0)
            fleet.kill("r-b", signal.SIGKILL)
            traffic.wait_all(120)
            return traffic.report("agent killed (replica survives)")
    finally:
        drill.close()


def agent_frozen(workdir: Path, keepalive_s: int = 4) -> Report:
    """Two replicas, one SIGSTOPped with jobs on it: its jobs fail over when it is found gone
    (keepalive or telemetry silence), far before the prompts' deadline."""
    drill = Drill(workdir)
    drill.start_broker()
    try:
        fleet = drill.start_fleet("drill-frozen", _agents("f-a", "f-b"), keepalive_s=keepalive_s)
        with drill.traffic() as traffic:
            frozen = fleet.processes["f-b"]
            frozen.send_signal(signal.SIGSTOP)
            try:
                for _ in range(8):
                    traffic.send(choice_prompt(timeout_s=60.0))
                traffic.wait_all(60)
            finally:
                frozen.send_signal(signal.SIGCONT)
            return traffic.report(
                "agent frozen (SIGSTOP)", silence_limit_s=max(3 * 0.5, 1.5 * keepalive_s)
            )
    finally:
        drill.close()


def burst(workdir: Path, prompts: int = 200, max_queued: int | None = None) -> Report:
    """``prompts`` published back to back to two agents; with ``max_queued`` the controller
    holds at most that many waiting."""
    drill = Drill(workdir)
    drill.start_broker()
    args = None if max_queued is None else ["--max-queued", str(max_queued)]
    try:
        drill.start_fleet("drill-burst", _agents("u-a", "u-b"), controller_args=args)
        with drill.traffic() as traffic:
            for _ in range(prompts):
                traffic.send(choice_prompt(timeout_s=300.0))
            traffic.wait_all(360)
            name = f"burst of {prompts}" + (f" (queue bound {max_queued})" if max_queued else "")
            return traffic.report(name)
    finally:
        drill.close()


def early_against_waiting(
    workdir: Path, prompts: int = 12, rounds: int = 2
) -> tuple[Report, Report]:
    """The same free-text prompts to SmolLM2 and Gemma 3 (one fleet, the same two agents),
    answered as soon as decided and waiting for every expert: the controller is restarted
    with and without ``--no-early-answers`` in alternating rounds, so a change of load on the
    machine falls on both alike."""
    drill = Drill(workdir)
    drill.start_broker()
    latencies: dict[bool, list[float]] = {True: [], False: []}
    counts: dict[bool, Counter[str]] = {True: Counter(), False: Counter()}
    lost = {True: 0, False: 0}
    duplicated = {True: 0, False: 0}
    try:
        specs = [AgentSpec("e-a", [SMOLLM2]), AgentSpec("e-b", [GEMMA3])]
        fleet = drill.start_fleet("drill-early", specs, controllers=("warm-up",))
        fleet.kill("warm-up", signal.SIGTERM)
        fleet.processes.pop("warm-up")
        for index in range(2 * rounds):
            early = index % 2 == 0
            name = f"{'early' if early else 'wait'}-{index}"
            fleet.start_controller(name, None if early else ["--no-early-answers"])
            fleet.wait_ready(["e-a", "e-b"], timeout_s=60)
            with drill.traffic() as traffic:
                for _ in range(max(1, prompts // rounds)):
                    traffic.send(text_prompt(max_tokens=24))
                    traffic.wait_all(120)
                report = traffic.report(name)
            latencies[early] += report.latencies_s
            counts[early].update(report.statuses)
            lost[early] += report.lost
            duplicated[early] += report.duplicated
            fleet.kill(name, signal.SIGTERM)
            fleet.processes.pop(name)
    finally:
        drill.close()
    reports = [
        Report(
            name="early answers" if early else "waiting for every expert",
            asked=len(latencies[early]) + lost[early],
            answered=len(latencies[early]),
            lost=lost[early],
            duplicated=duplicated[early],
            statuses=dict(counts[early]),
            latencies_s=latencies[early],
        )
        for early in (True, False)
    ]
    return reports[0], reports[1]


def broker_comes_late(workdir: Path, late_s: float = 4.0) -> Report:
    """A controller and an agent started while the broker is down (a device that boots before
    the broker's host): they keep trying, and serve once it is up."""
    drill = Drill(workdir)
    endpoint = BrokerEndpoint("127.0.0.1", drill.port, "5")
    fleet = LocalFleet(endpoint, "drill-late", workdir, keepalive_s=4, telemetry_interval_s=0.5)
    drill.fleet = fleet
    try:
        fleet.start_controller("c1")
        fleet.start_agent(AgentSpec("l-a", [SMOLLM2]))
        time.sleep(late_s)
        for name, proc in fleet.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited while the broker was down:\n{fleet.log_tail(name)}"
                )
        drill.start_broker()
        up = time.monotonic()
        fleet.wait_ready(["l-a"], timeout_s=120)
        with drill.traffic() as traffic:
            traffic.send(choice_prompt(timeout_s=30))
            traffic.wait_all(30)
            return traffic.report(
                "services started before the broker", ready_s=time.monotonic() - up
            )
    finally:
        drill.close()


# -- request ids used again (issue 22) --------------------------------------------------------

JAPAN = ("The capital of Japan is", ["Lima", "Tokyo"], "Tokyo")
FRANCE = ("The capital of France is", ["Paris", "Rome"], "Paris")


@dataclass
class Reuse:
    """One choice prompt asked under a request id that another prompt uses or used, read on
    its own reply route."""

    asked: _Asked
    expected: str  # the right choice, which SmolLM2 names with confidence
    route: str

    @property
    def wrong(self) -> bool:
        """Answered with another prompt's result: under another request id, or ok (or
        partial) naming anything but this prompt's own right choice."""
        return any(
            a.request_id != self.asked.prompt.request_id
            or (a.status in ("ok", "partial") and a.answer != self.expected)
            for a in self.asked.answers
        )


class _Inbox:
    """Asks choice prompts under chosen request ids, one-shot, and reads every answer under
    ``replies/``: on the shared prompt topic with a ``reply_to`` under the asker's name, or on
    a login's own prompt topic (answered on ``replies/{login}/{request_id}``)."""

    def __init__(self, endpoint: BrokerEndpoint, fleet: str) -> None:
        self.fleet = fleet
        self.asked: list[Reuse] = []
        self._by_route: dict[str, Reuse] = {}
        self._lock = threading.Condition()
        self.bus = Bus(endpoint, fleet, client_id=f"moe2-inbox-{uuid.uuid4().hex[:8]}")
        self.bus.subscribe(topics.REPLIES, self._on_answer)

    def __enter__(self) -> _Inbox:
        self.bus.start()
        if not self.bus.wait_connected(10):
            raise ConnectionError("drill client cannot reach the broker")
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.bus.close()

    def ask(
        self,
        case: tuple[str, list[str], str],
        request_id: str,
        asker: str | None = None,
        login: str | None = None,
    ) -> Reuse:
        text, choices, expected = case
        prompt = Prompt(prompt=text, choices=choices, request_id=request_id, timeout_s=60.0)
        if login is not None:
            topic = topics.CLIENT_PROMPTS.name(self.fleet, client_id=login)
            route = topics.REPLIES.name(self.fleet, client_id=login, request_id=request_id)
        else:
            topic = topics.PROMPTS.name(self.fleet)
            route = topics.REPLIES.name(self.fleet, client_id=asker or "x", request_id=request_id)
            prompt = prompt.model_copy(update={"reply_to": route})
        reuse = Reuse(_Asked(prompt, time.monotonic()), expected, route)
        with self._lock:
            self.asked.append(reuse)
            self._by_route[route] = reuse
        self.bus.publish_to(topic, prompt, qos=1).wait_for_publish(5)
        return reuse

    def _on_answer(self, inbound: Inbound[Answer]) -> None:
        with self._lock:
            reuse = self._by_route.get(inbound.topic)
            if reuse is None:
                return
            asked = reuse.asked
            if all(a != inbound.message for a in asked.answers):
                asked.answers.append(inbound.message)
            if asked.answered_at is None:
                asked.answered_at = time.monotonic()
            self._lock.notify_all()

    def wait_all(self, timeout_s: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: all(r.asked.answers for r in self.asked), timeout_s)

    def report(self, name: str, **figures: float) -> Report:
        with self._lock:
            items = list(self.asked)
        wrong = float(sum(r.wrong for r in items))
        return _report(name, [r.asked for r in items], wrong=wrong, **figures)


def reused_id(workdir: Path, rounds: int = 2) -> Report:
    """Request ids used again with other content, SmolLM2 scoring Japan [Lima, Tokyo] and
    France [Paris, Rome]. Each round: on the shared prompt topic, Japan then France under one
    id (the first answered), and again with the first still in flight (two askers, two reply
    routes: the second is refused ``rejected``); on two logins' own topics, Japan and France
    under one id at once (each answered its own). Then the controller is restarted (the
    answers it remembered are gone) and France is asked under an id Japan used: the agent,
    which still keeps Japan's result under that id, runs it anew. ``wrong``: answers with
    another prompt's result (figure ``restart_right``: 1 when that last one named Paris)."""
    drill = Drill(workdir)
    drill.start_broker()
    try:
        fleet = drill.start_fleet("drill-reuse", _agents("i-a"))
        with _Inbox(fleet.endpoint, fleet.fleet) as inbox:
            for i in range(rounds):
                inbox.ask(JAPAN, f"after-{i}", asker="first")
                inbox.wait_all(60)
                inbox.ask(FRANCE, f"after-{i}", asker="second")
                inbox.ask(JAPAN, f"during-{i}", asker="first")
                inbox.ask(FRANCE, f"during-{i}", asker="second")
                inbox.ask(JAPAN, f"login-{i}", login="la")
                inbox.ask(FRANCE, f"login-{i}", login="lb")
                inbox.wait_all(60)
            fleet.kill("c1", signal.SIGTERM)
            fleet.start_controller("c1")
            fleet.wait_ready(["i-a"], timeout_s=120)
            last = inbox.ask(FRANCE, "after-0", asker="third")
            inbox.wait_all(60)
            answers = last.asked.answers
            right = float(bool(answers) and not last.wrong and answers[0].status == "ok")
            return inbox.report("reused id", restart_right=right)
    finally:
        drill.close()


# -- state that cannot be used --------------------------------------------------------------


class CannotMount(RuntimeError):
    """This machine will not mount a small file system for a drill (not root, a sandbox)."""


@contextlib.contextmanager
def small_tmpfs(folder: Path, size_kib: int = 256) -> Iterator[Path]:
    """A real file system of ``size_kib`` KiB mounted on ``folder``: a disk that can be filled
    for real (ENOSPC from the kernel). Needs root; raises CannotMount where it cannot."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        raise CannotMount(f"cannot mount a small tmpfs on {folder}: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_disk(folder: Path) -> Path:
    """Write a filler file in ``folder`` until its file system has no block left."""
    filler = folder / "filler"
    chunk = b"\0" * 4096
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


def _wait_log(fleet: LocalFleet, name: str, text: str, timeout_s: float) -> float:
    """Seconds until ``text`` is in the log of ``name`` (NaN if it never is)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if text in fleet.log_tail(name, 400):
            return time.monotonic() - started
        time.sleep(0.2)
    return float("nan")


def bad_state(workdir: Path, fault: str = "full") -> Report:
    """The controller started on state it cannot use (``full``: its state folder on a full
    file system; ``file``: a file where its state folder should be), one-shot prompts every
    0.5 s and a few long ones; the state repaired; once the ledger is durable again the
    controller is SIGKILLed with prompts in flight and started again. What it accepted while
    not durable is written out when it can be, so the restart answers it: nothing is lost."""
    drill = Drill(workdir)
    state = workdir / "state"
    with contextlib.ExitStack() as stack:
        if fault == "full":
            filler = fill_disk(stack.enter_context(small_tmpfs(state)))
        else:
            state.write_text("a file where the state folder should be")
            filler = state
        stack.callback(drill.close)
        drill.start_broker()
        report = _bad_state_traffic(drill, filler, fault)
    return report


def _bad_state_traffic(drill: Drill, filler: Path, fault: str) -> Report:
    fleet = drill.start_fleet("drill-state", _agents("s-a"))
    with drill.traffic(resend_s=None) as traffic:
        flow(traffic, choice_prompt, 0.5, 4.0)
        for _ in range(4):
            traffic.send(text_prompt(max_tokens=48))
        filler.unlink()
        durable_again_s = _wait_log(fleet, "c1", "is written again", 60)
        time.sleep(0.3)
        fleet.kill("c1", signal.SIGKILL)
        flow(traffic, choice_prompt, 0.5, 2.0)
        fleet.start_controller("c1")
        traffic.wait_all(120)
        what = "a full disk" if fault == "full" else "a state folder that is a file"
        return traffic.report(
            f"controller started on {what}, repaired, killed", durable_again_s=durable_again_s
        )


# -- the fleet's own view: cleared statuses, flapping agents, ghosts ------------------------


class PlanWatch:
    """Counts, from ``start()``, the fleet plans, the per-agent plans and the re-plans the
    controller announces (``controller/events`` of kind replan that publish an epoch)."""

    def __init__(self, endpoint: BrokerEndpoint, fleet: str) -> None:
        self.bus = Bus(endpoint, fleet, client_id=f"moe2-planwatch-{uuid.uuid4().hex[:8]}")
        self.counts: Counter[str] = Counter()
        self._counting = False
        self.last_plan: FleetPlan | None = None
        self.bus.subscribe(topics.CONTROLLER_PLAN, self._on_plan)
        self.bus.subscribe(topics.AGENT_PLAN, lambda i: self._count("agent_plans"))
        self.bus.subscribe(topics.CONTROLLER_EVENTS, self._on_event)
        self.bus.connect()
        time.sleep(0.5)  # the retained plans arrive first and are not counted

    def _on_plan(self, inbound: Inbound[FleetPlan]) -> None:
        self.last_plan = inbound.message
        self._count("fleet_plans")

    def planned(self, agent_id: str, timeout_s: float) -> float:
        """Seconds until the fleet plan holds ``agent_id`` (NaN if it did not in time)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            plan = self.last_plan
            if plan is not None and agent_id in plan.assignments:
                return time.monotonic() - start
            time.sleep(0.1)
        return float("nan")

    def _count(self, what: str) -> None:
        if self._counting:
            self.counts[what] += 1

    def _on_event(self, inbound: Inbound[ControllerEvent]) -> None:
        event = inbound.message
        if event.kind == "replan" and event.reason.startswith("epoch"):
            self._count("replans")
        elif event.kind == "agent_offline" and "forgotten" in event.reason:
            self._count("forgotten")

    def start(self) -> None:
        self.counts.clear()
        self._counting = True

    def figures(self) -> dict[str, float]:
        return {k: float(self.counts[k]) for k in ("replans", "fleet_plans", "agent_plans")}

    def close(self) -> None:
        self.bus.close()


def _retain(bus: Bus, name: str, payload: Message | bytes) -> None:
    bus.publish_to(name, payload, qos=1, retain=True).wait_for_publish(10)


def _retained(endpoint: BrokerEndpoint, fleet: str, agent_id: str) -> set[str]:
    """Which of an agent's status and capabilities the broker retains (a new subscriber's
    view)."""
    found: set[str] = set()
    reader = Bus(endpoint, fleet, client_id=f"moe2-retained-{uuid.uuid4().hex[:8]}")
    reader.subscribe(topics.AGENT_STATUS, lambda i: found.add("status"), agent_id=agent_id)
    reader.subscribe(
        topics.AGENT_CAPABILITIES, lambda i: found.add("capabilities"), agent_id=agent_id
    )
    reader.connect()
    time.sleep(1.0)
    reader.close()
    return found


def status_cleared(workdir: Path) -> Report:
    """A live agent's retained status and capabilities cleared (empty retained payloads, as
    ``mosquitto_pub -r -n`` or any client may send): the agent publishes them again, the
    controller takes it back, and one-shot prompts sent from that moment on are answered."""
    drill = Drill(workdir)
    drill.start_broker()
    try:
        fleet = drill.start_fleet("drill-cleared", _agents("s-a"))
        watch = PlanWatch(fleet.endpoint, fleet.fleet)
        writer = Bus(fleet.endpoint, fleet.fleet, client_id=f"moe2-clear-{uuid.uuid4().hex[:8]}")
        writer.connect()
        with drill.traffic(resend_s=None) as traffic:
            traffic.send(choice_prompt(timeout_s=30))
            traffic.wait_all(60)
            watch.start()
            cleared = time.monotonic()
            for topic in (topics.AGENT_STATUS, topics.AGENT_CAPABILITIES):
                _retain(writer, topic.name(fleet.fleet, agent_id="s-a"), b"")
            flow(traffic, lambda: choice_prompt(timeout_s=30), 0.5, 5.0)
            traffic.wait_all(60)
            retained = _retained(fleet.endpoint, fleet.fleet, "s-a")
            report = traffic.report(
                "agent's retained status and capabilities cleared",
                answered_again_s=traffic.latency_of_first_sent_after(cleared),
                forgotten=float(watch.counts["forgotten"]),
                status_restored=float("status" in retained),
                capabilities_restored=float("capabilities" in retained),
            )
        writer.close()
        watch.close()
        return report
    finally:
        drill.close()


def flapping_agent(workdir: Path, flaps: int = 40, over_s: float = 60.0) -> Report:
    """An agent's status forged offline ``flaps`` times over ``over_s`` (the agent puts it
    right each time: online again a moment later) beside a steady replica, prompts asked all
    along: the re-plans, fleet plans and agent plans that caused, and the prompts' answers."""
    drill = Drill(workdir)
    drill.start_broker()
    try:
        fleet = drill.start_fleet("drill-flap", _agents("p-a", "p-b"))
        watch = PlanWatch(fleet.endpoint, fleet.fleet)
        writer = Bus(fleet.endpoint, fleet.fleet, client_id=f"moe2-flap-{uuid.uuid4().hex[:8]}")
        writer.connect()
        offline = AgentStatus(
            agent_id="p-a",
            state="offline",
            version="forged",
            time_s=now_s(),
            keepalive_s=4,
            telemetry_interval_s=0.5,
            reason="connection lost",
        )
        name = topics.AGENT_STATUS.name(fleet.fleet, agent_id="p-a")
        with drill.traffic() as traffic:
            watch.start()
            for index in range(flaps):
                _retain(writer, name, offline)
                if index % 4 == 0:
                    traffic.send(choice_prompt(timeout_s=60))
                time.sleep(over_s / flaps)
            calm = time.monotonic()
            traffic.send(choice_prompt(timeout_s=60))
            back_s = watch.planned("p-a", 60.0)  # let back once steady
            traffic.wait_all(90)
            report = traffic.report(
                f"agent flapping ({flaps} in {over_s:g} s)",
                **watch.figures(),
                answered_after_s=traffic.latency_of_first_sent_after(calm),
                back_in_plan_s=back_s,
            )
        writer.close()
        watch.close()
        return report
    finally:
        drill.close()


def _ghost(index: int, expert_id: str) -> tuple[AgentStatus, AgentCapabilities]:
    agent_id = f"ghost-{index:05d}"
    status = AgentStatus(
        agent_id=agent_id,
        state="online",
        version="ghost",
        time_s=now_s(),
        keepalive_s=5 if index % 2 else 3600,  # half never found silent by keepalive
        telemetry_interval_s=1.0,
    )
    caps = stand_in_capabilities(agent_id, expert_id, model="ghost.gguf", hostname="ghost")
    return status, caps


def ghosts(workdir: Path, count: int = 10_000, over_s: float = 15.0) -> Report:
    """``count`` agents announced over ``over_s`` on an open broker (retained status and
    capabilities, claiming the real agent's expert, never any telemetry) beside one real
    agent; then prompts: answered, and the re-plans and plans the ghosts caused in 30 s."""
    drill = Drill(workdir)
    drill.start_broker()
    try:
        fleet = drill.start_fleet("drill-ghosts", _agents("g-real"))
        watch = PlanWatch(fleet.endpoint, fleet.fleet)
        writer = Bus(fleet.endpoint, fleet.fleet, client_id=f"moe2-ghosts-{uuid.uuid4().hex[:8]}")
        writer.connect()
        with drill.traffic() as traffic:
            watch.start()
            started = time.monotonic()
            for index in range(count):
                status, caps = _ghost(index, SMOLLM2["id"])
                agent_id = status.agent_id
                writer.publish(topics.AGENT_CAPABILITIES, caps, agent_id=agent_id)
                writer.publish(topics.AGENT_STATUS, status, agent_id=agent_id)
                pause = started + over_s * (index + 1) / count - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            announced = time.monotonic() - started
            asked = time.monotonic()
            traffic.send(choice_prompt(timeout_s=60))
            traffic.wait_all(90)
            time.sleep(max(0.0, started + 30.0 - time.monotonic()))
            report = traffic.report(
                f"{count} ghost agents",
                announced_s=announced,
                answered_s=traffic.latency_of_first_sent_after(asked),
                **watch.figures(),
            )
        writer.close()
        watch.close()
        return report
    finally:
        drill.close()


# -- fencing: a controller frozen or cut off must not answer twice ---------------------------


class Relay:
    """A TCP relay between one client and the broker whose link can be cut: while cut it
    passes nothing in either direction (bytes, or a closed connection) and keeps both sockets
    open, as a network partition does; the process behind it runs on. New connections are
    taken and held the same way."""

    def __init__(self, upstream: BrokerEndpoint) -> None:
        self.upstream = upstream
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    @property
    def endpoint(self) -> BrokerEndpoint:
        return BrokerEndpoint("127.0.0.1", self.port, self.upstream.mqtt_version)

    def cut(self) -> None:
        self._flowing.clear()

    def restore(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        for sock in [self._server, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
                broker = socket.create_connection((self.upstream.host, self.upstream.port))
            except OSError:
                continue
            self._sockets += [client, broker]
            for source, sink in ((client, broker), (broker, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            self._flowing.wait()  # while cut, what was read waits here: nothing passes
            try:
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except OSError:
                with contextlib.suppress(OSError):
                    source.close()
                return


@dataclass
class PlanLog:
    """Every plan published to an agent (``agents/{id}/plan``) and every plan epoch an agent
    reports in its telemetry, in the order they came; and the controllers claiming ``active``."""

    plans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # (term, epoch)
    reported: dict[str, list[int]] = field(default_factory=dict)  # telemetry plan_epoch
    statuses: dict[str, ControllerStatus] = field(default_factory=dict)
    most_active: int = 0  # the most controllers online and active at once

    def watch(self, endpoint: BrokerEndpoint, fleet: str) -> Bus:
        bus = Bus(endpoint, fleet, client_id=f"moe2-planlog-{uuid.uuid4().hex[:8]}")
        bus.subscribe(topics.AGENT_PLAN, self._on_plan)
        bus.subscribe(topics.AGENT_TELEMETRY, self._on_telemetry)
        bus.subscribe(topics.CONTROLLER_STATUS, self._on_status)
        bus.connect()
        return bus

    def _on_plan(self, inbound: Inbound[ActivationPlan]) -> None:
        plan = inbound.message
        self.plans.setdefault(plan.agent_id, []).append(plan.order)

    def _on_telemetry(self, inbound: Inbound[Telemetry]) -> None:
        epoch = inbound.message.plan_epoch
        if epoch is not None:
            self.reported.setdefault(inbound.message.agent_id, []).append(epoch)

    def _on_status(self, inbound: Inbound[ControllerStatus]) -> None:
        self.statuses[inbound.message.controller_id] = inbound.message
        active = [s for s in self.statuses.values() if s.state == "online" and s.role == "active"]
        self.most_active = max(self.most_active, len(active))

    def wait_standby(self, controller_id: str, timeout_s: float = 60.0) -> None:
        """Until ``controller_id`` says it is online as a standby (subscribed: it shadows every
        prompt from now on)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.statuses.get(controller_id)
            if status is not None and status.state == "online" and status.role == "standby":
                return
            time.sleep(0.1)
        raise TimeoutError(f"controller {controller_id} not online as a standby in {timeout_s} s")

    def monotone(self) -> bool:
        """Whether no agent was ever sent, or reported holding, an older plan epoch (or
        (term, epoch)) after a newer one."""
        sent = [[epoch for _, epoch in orders] for orders in self.plans.values()]
        orders = list(self.plans.values())
        return all(s == sorted(s) for s in [*sent, *orders, *self.reported.values()])

    def figures(self) -> dict[str, float]:
        return {
            "epochs_monotone": float(self.monotone()),
            "plans": float(sum(len(p) for p in self.plans.values())),
            "most_active": float(self.most_active),
        }


def _fenced_traffic(
    drill: Drill, fault: Callable[[], None], heal: Callable[[], None], fault_s: float
) -> Traffic:
    """One-shot prompts every 0.5 s from 3 s before a fault until 8 s after it heals; then
    every answer waited for (and a few seconds more, for any late second answer)."""
    traffic = drill.traffic(resend_s=None)
    with traffic:
        sender = threading.Thread(
            target=flow, args=(traffic, choice_prompt, 0.5, 3.0 + fault_s + 8.0)
        )
        sender.start()
        time.sleep(3.0)
        fault()
        try:
            time.sleep(fault_s)
        finally:
            heal()
        sender.join()
        traffic.wait_all(120)
        time.sleep(5.0)
    return traffic


def controller_frozen(workdir: Path, frozen_s: float = 30.0, standby: bool = True) -> Report:
    """The active controller SIGSTOPped for ``frozen_s`` (beside a standby, or alone) under
    one-shot prompts every 0.5 s, then SIGCONT: each prompt answered once, none failed, and no
    agent ever sent or holding an older plan than one it had."""
    drill = Drill(workdir)
    drill.start_broker()
    log = PlanLog()
    try:
        fleet = drill.start_fleet("drill-freeze", _agents("z-a", "z-b"))
        watcher = log.watch(fleet.endpoint, fleet.fleet)
        if standby:
            fleet.start_controller("c2")
            log.wait_standby("c2")
        c1 = fleet.processes["c1"]
        traffic = _fenced_traffic(
            drill,
            lambda: c1.send_signal(signal.SIGSTOP),
            lambda: c1.send_signal(signal.SIGCONT),
            frozen_s,
        )
        watcher.close()
        beside = "beside a standby" if standby else "alone"
        return traffic.report(f"controller frozen {frozen_s:.0f} s {beside}", **log.figures())
    finally:
        drill.close()


def controller_cut_off(workdir: Path, cut_s: float = 30.0, standby: bool = True) -> Report:
    """The active controller's link to the broker cut for ``cut_s`` (a relay that passes
    nothing; the process runs on), beside a standby on a direct link that takes over, or
    alone, under one-shot prompts every 0.5 s: each prompt answered once, none failed, plans
    monotone."""
    drill = Drill(workdir)
    broker = drill.start_broker()
    relay = Relay(broker.endpoint)
    log = PlanLog()
    try:
        fleet = drill.start_fleet(
            "drill-cut", _agents("x-a", "x-b"), controller_args=["--broker", relay.endpoint.url]
        )
        watcher = log.watch(fleet.endpoint, fleet.fleet)
        if standby:
            fleet.start_controller("c2")
            log.wait_standby("c2")
        traffic = _fenced_traffic(drill, relay.cut, relay.restore, cut_s)
        watcher.close()
        beside = "beside a standby" if standby else "alone"
        return traffic.report(f"controller cut off {cut_s:.0f} s {beside}", **log.figures())
    finally:
        drill.close()
        relay.close()


# -- the live loop: a slowed expert planned away and back ----------------------------------

SLOW_FLEET = "drill-slow"
# The live loop's settings for the drill, as tests/moe2/test_live_loop.py runs it: probes every
# second while an expert's agent is idle, a rolling median of 8, re-plans at least 3 s apart.
LOOP_CONFIG = (
    "probe_interval_s = 1.0\nprobe_timeout_s = 6.0\ndrift_cooldown_s = 3.0\ncost_window = 8\n"
)


def lab_profile_for(fleet: str, folder: Path, per_category: int = 10) -> tuple[Path, Path]:
    """The shipped lab profile (a stratified part of it, so loading is quick) and gate, under
    ``fleet``'s name, written to ``folder``: the gate is the lab's, unchanged."""
    from controller.gate.gate import Gate, file_sha256
    from controller.profile import load_profile, save_profile
    from controller.suite import stratified

    data = Path(__file__).resolve().parents[2] / "data"
    profile = load_profile(data / "profile-lab.json")
    kept = stratified(profile.items, per_category)
    ids = {i.id for i in kept}
    profile = profile.model_copy(
        update={
            "fleet": fleet,
            "items": kept,
            "records": {k: v for k, v in profile.records.items() if k in ids},
        }
    )
    profile_path, gate_path = folder / "profile.json", folder / "gate.pt"
    save_profile(profile, profile_path)
    gate = Gate.load(data / "gate-lab.pt")
    gate.fleet, gate.profile_sha256 = fleet, file_sha256(profile_path)
    gate.save(gate_path)
    return profile_path, gate_path


class DutyCycle:
    """Pause a process for ``stop_s`` of every ``stop_s + run_s``: a slow device, for real."""

    def __init__(self, pid: int, stop_s: float = 0.4, run_s: float = 0.1) -> None:
        self.pid, self.stop_s, self.run_s = pid, stop_s, run_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            os.kill(self.pid, signal.SIGSTOP)
            time.sleep(self.stop_s)
            os.kill(self.pid, signal.SIGCONT)
            self._done.wait(self.run_s)

    def __enter__(self) -> DutyCycle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)
        os.kill(self.pid, signal.SIGCONT)


class LoopWatch:
    """The controller's plans, cost tables and events, as they come."""

    def __init__(self, endpoint: BrokerEndpoint, fleet: str) -> None:
        self.plans: list[FleetPlan] = []
        self.tables: list[CostTable] = []
        self.events: list[ControllerEvent] = []
        self.bus = Bus(endpoint, fleet, client_id=f"moe2-loopwatch-{uuid.uuid4().hex[:8]}")
        self.bus.subscribe(topics.CONTROLLER_PLAN, lambda i: self.plans.append(i.message))
        self.bus.subscribe(topics.CONTROLLER_COSTS, lambda i: self.tables.append(i.message))
        self.bus.subscribe(topics.CONTROLLER_EVENTS, lambda i: self.events.append(i.message))
        self.bus.connect()

    def costs(self) -> dict[str, ExpertCostRow]:
        return {r.key: r for r in self.tables[-1].experts} if self.tables else {}

    def plan_where(self, holds: Callable[[FleetPlan], bool], timeout_s: float) -> float:
        """Seconds until the latest fleet plan holds ``holds`` (NaN if not in time)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.plans and holds(self.plans[-1]):
                return time.monotonic() - start
            time.sleep(0.1)
        return float("nan")

    def close(self) -> None:
        self.bus.close()


def _planned_keys(plan: FleetPlan) -> set[str]:
    return {expert_key(a, e) for a, experts in plan.assignments.items() for e in experts}


def _agents_of(plan: FleetPlan) -> set[str]:
    """The agents with an expert in ``plan``."""
    return {a for a, experts in plan.assignments.items() if experts}


def _delay_budgets(watch: LoopWatch, keys: list[str], factor: float) -> Budgets:
    """``factor`` times the delays the controller has learnt (per category, the slowest of
    ``keys``), once each expert has a few live samples."""
    # a gated controller and two llama.cpp agents starting on a loaded 2-core machine: minutes
    if not wait_until(
        lambda: all(getattr(watch.costs().get(k), "delay_samples", 0) >= 4 for k in keys), 420
    ):
        raise RuntimeError(f"no live costs for {keys} within 420 s: {watch.costs()}")
    rows = watch.costs()
    categories = sorted(rows[keys[0]].delay_s)
    return Budgets(delay_s={c: factor * max(rows[k].delay_s[c] for k in keys) for c in categories})


def _suite_prompts(timeout_s: float) -> Callable[[], Prompt]:
    """Suite prompts with their categories, one after another (the delay budgets are per
    category, and a prompt's category is what its cost is learnt in)."""
    from controller.suite import load_suite, stratified

    items = stratified([i for i in load_suite() if i.split == "test"], 10)
    turn = iter(range(10**9))

    def make() -> Prompt:
        item = items[next(turn) % len(items)]
        return Prompt(
            prompt=item.prompt,
            choices=item.choices,
            question=item.question,
            category=item.category,
            timeout_s=timeout_s,
        )

    return make


def _flowing(traffic: Traffic, make: Callable[[], Prompt], every_s: float) -> Callable[[], None]:
    """Send a prompt every ``every_s`` from a thread; returns what stops it."""
    done = threading.Event()

    def run() -> None:
        while not done.is_set():
            traffic.send(make())
            done.wait(every_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def stop() -> None:
        done.set()
        thread.join(10)

    return stop


def slowed_expert(
    workdir: Path,
    every_s: float = 1.5,
    factor: float = 2.5,
    within_s: float = 60.0,
    still_slow_s: float = 6.0,
    timeout_s: float = 60.0,
    templates: tuple[str, ...] = ("cloze",),
) -> Report:
    """The lab fleet's two agents (SmolLM2 on edge-a, Gemma 3 on edge-b, an expert per choice
    template of ``templates``: ``("cloze", "qa", "letter")`` is the whole lab fleet, six
    experts) under a controller
    with the shipped profile and gate, delay budgets at ``factor`` times the delays it learnt;
    a planned agent stopped 0.4 s of every 0.5 s while a suite prompt comes every ``every_s``.
    Figures: seconds from the slowdown to the plan without the agent (``away_s``), and from
    its recovery to the plan with it again (``back_s``), NaN when not within ``within_s``;
    answers over their budget (``late``). Every prompt should be answered, none failed (the
    other agent is online throughout)."""
    drill = Drill(workdir)
    drill.start_broker()
    lab_profile_for(SLOW_FLEET, workdir)
    (workdir / "controller.toml").write_text(LOOP_CONFIG)
    args = ["--profile", str(workdir / "profile.json"), "--gate", str(workdir / "gate.pt"),
            "--config", str(workdir / "controller.toml"), "--drift-threshold", "0.5"]  # fmt: skip
    agents = [
        AgentSpec(
            agent,
            [{**model, "id": f"{name}-{t}", "template": t} for t in templates],
            {"power_model_w": 15.0},
        )
        for agent, name, model in (("edge-a", "smollm2", SMOLLM2), ("edge-b", "gemma3", GEMMA3))
    ]
    keys = [expert_key(a.agent_id, str(e["id"])) for a in agents for e in a.experts]
    try:
        # ready when both experts have live costs (_delay_budgets): probes load an unplanned
        # expert, so the agents' loaded experts need not be the plan's (wait_ready's test)
        fleet = drill.start_fleet(SLOW_FLEET, agents, controller_args=args, ready_s=None)
        watch = LoopWatch(fleet.endpoint, fleet.fleet)
        try:
            return _slow_and_recover(drill, watch, keys, every_s, factor, within_s,
                                     still_slow_s, timeout_s)  # fmt: skip
        finally:
            watch.close()
    finally:
        drill.close()


def _slow_and_recover(
    drill: Drill,
    watch: LoopWatch,
    keys: list[str],
    every_s: float,
    factor: float,
    within_s: float,
    still_slow_s: float,
    timeout_s: float,
) -> Report:
    """The drill's acts: budgets from the learnt delays, the slowdown under traffic, the plan
    away, the recovery, the plan back; then every answer waited for."""
    assert drill.fleet is not None
    budgets = _delay_budgets(watch, keys, factor)
    bus = Bus(drill.fleet.endpoint, SLOW_FLEET, client_id=f"b-{uuid.uuid4().hex[:8]}")
    bus.connect()
    bus.publish(topics.CONTROLLER_BUDGETS, budgets).wait_for_publish(5)
    bus.close()
    if math.isnan(watch.plan_where(lambda p: bool(p.delay_s), 60)):
        raise RuntimeError(f"no plan under the delay budgets {budgets.delay_s} within 60 s")
    planned = _planned_keys(watch.plans[-1])
    # the agent of a planned expert (edge-b's Gemma when it is planned)
    slowed = max((agent_of(k) for k in planned), default="edge-b")
    pid = drill.fleet.processes[slowed].pid
    with drill.traffic(resend_s=None) as traffic:
        stop = _flowing(traffic, _suite_prompts(timeout_s), every_s)
        try:
            with DutyCycle(pid):
                away = watch.plan_where(lambda p: slowed not in _agents_of(p), within_s)
                time.sleep(still_slow_s)  # still slow: the plan stays away from it
            back = watch.plan_where(lambda p: slowed in _agents_of(p), within_s)
        finally:
            stop()
        traffic.wait_all(timeout_s + 30)
        report = traffic.report(f"{slowed} slowed 0.4 s of every 0.5 s", away_s=away, back_s=back)
    report.figures["late"] = float(sum(1 for a in traffic.first_answers() if a.over_budget))
    report.figures["load_average_1min"] = os.getloadavg()[0]
    delays = ", ".join(f"{c} {s:.2f} s" for c, s in sorted(budgets.delay_s.items()))
    report.notes.append(f"delay budgets: {delays}")
    report.notes.append(
        "plans: " + " → ".join(f"{p.epoch} {sorted(_planned_keys(p))}" for p in watch.plans)
    )
    drifts = [e.reason for e in watch.events if e.kind == "drift"]
    report.notes += [f"drift: {d}" for d in drifts[-4:]]
    return report
