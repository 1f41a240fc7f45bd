"""Fault drills: a real local fleet (Mosquitto, agents serving SmolLM2, controllers, all
separate processes), prompts flowing from a client that counts what comes back, and the
faults a fleet meets in the field: a broker restarted, a controller or an agent killed or
frozen, a burst. ``tests/moe2/test_faults.py`` asserts on the reports; ``benchmarks/faults.py``
prints them.

The client behaves as the contract asks of one: each prompt has its own request id and is
published again after a reconnect and every ``resend_s`` until answered (the controller takes
the same prompt once). A prompt is *asked* when the broker acknowledged one of its publishes
(PUBACK); one it never acknowledged (published into a broker going down) is counted apart, as
*unacknowledged*. An asked prompt is *lost* when no answer ever comes; *duplicated* when two
different answers come for one request id.
"""

from __future__ import annotations

import signal
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from messages import topics
from messages.answers import Answer
from messages.bus import BrokerEndpoint, Bus, Inbound
from messages.controller import FleetPlan
from messages.prompts import Prompt
from moe2.broker import LocalBroker, free_port, start_mosquitto
from moe2.local_fleet import AgentSpec, LocalFleet

SMOLLM2 = {"id": "smollm2", "model": "smollm2-135m", "n_ctx": 512, "n_threads": 1}
GEMMA3 = {"id": "gemma3", "model": "gemma3-270m", "n_ctx": 512, "n_threads": 1, "stop": ["\n"]}
CHOICE = ("The capital of France is", ["Paris", "Rome"])


@dataclass
class _Asked:
    prompt: Prompt
    sent_at: float
    answers: list[Answer] = field(default_factory=list)
    answered_at: float | None = None
    mids: list[int] = field(default_factory=list)  # the MQTT message ids of its publishes
    acknowledged: bool = False  # the broker acknowledged (PUBACK) one of them


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
                f"; unacknowledged {self.unacknowledged} "
                f"({self.unacknowledged_answered} answered)"
                if self.unacknowledged
                else ""
            )
            + "".join(f"\n  {problem}" for problem in self.problems)
        )


class Traffic:
    """A client asking the fleet over its own reply topic, counting every answer. With
    ``resend_s=None`` it is a one-shot publisher (``mosquitto_pub``): each prompt is published
    once, never again, not even after a reconnect.

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
        self.resend_s = resend_s
        self.asked: dict[str, _Asked] = {}
        self.started = time.monotonic()
        self._lock = threading.Condition()
        self._stop = threading.Event()
        resend = [self._resend_all] if resend_s is not None else []
        self.bus = Bus(
            endpoint,
            fleet,
            client_id=f"moe2-{self.name}",
            on_connected=resend,
            persistent=durable,
            session_expiry_s=600,
        )
        self.bus.subscribe(topics.REPLIES, self._on_answer, client_id=self.name)
        # PUBACKs, by message id: paho sends a publish made while disconnected once it
        # reconnects, so only the broker's acknowledgement says a prompt reached it
        self._acked: set[int] = set()
        self.bus.client.on_publish = self._on_puback
        self._resender = threading.Thread(target=self._resend_loop, daemon=True)

    def __enter__(self) -> Traffic:
        self.bus.start()
        if not self.bus.wait_connected(10):
            raise ConnectionError("drill client cannot reach the broker")
        time.sleep(0.2)
        if self.resend_s is not None:
            self._resender.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.bus.close()

    def send(self, prompt: Prompt) -> str:
        request_id = prompt.request_id or uuid.uuid4().hex[:16]
        reply = topics.REPLIES.name(self.fleet, client_id=self.name, request_id=request_id)
        fields: dict[str, Any] = {"request_id": request_id}
        if not self.bus.mqtt5:
            fields["reply_to"] = reply
        prompt = prompt.model_copy(update=fields)
        with self._lock:
            self.asked[request_id] = _Asked(prompt, time.monotonic())
        self._publish(request_id)
        return request_id

    def _publish(self, request_id: str) -> None:
        asked = self.asked[request_id]
        reply = topics.REPLIES.name(self.fleet, client_id=self.name, request_id=request_id)
        info = self.bus.publish_to(
            topics.PROMPTS.name(self.fleet),
            asked.prompt,
            qos=1,
            response_topic=reply if self.bus.mqtt5 else None,
            correlation_data=request_id.encode() if self.bus.mqtt5 else None,
        )
        with self._lock:
            asked.mids.append(info.mid)
            asked.acknowledged |= info.mid in self._acked

    def retry_every(self, delay_s: float) -> None:
        """After losing the broker, try it again every ``delay_s`` (the fleet's services: from
        1 s doubling to 2 s), to come back before or after them."""
        self.bus.client.reconnect_delay_set(delay_s, delay_s)

    def _unanswered(self) -> list[str]:
        with self._lock:
            return [r for r, a in self.asked.items() if not a.answers]

    def _resend_all(self, session_present: bool) -> None:
        for request_id in self._unanswered():
            self._publish(request_id)

    def _resend_loop(self) -> None:
        assert self.resend_s is not None
        while not self._stop.wait(self.resend_s):
            if self.bus.connected:
                self._resend_all(False)

    def _on_puback(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        if getattr(reason, "is_failure", False):
            return  # refused (MQTT 5 reason code), not taken
        with self._lock:
            self._acked.add(mid)
            for asked in self.asked.values():
                if mid in asked.mids:
                    asked.acknowledged = True
            self._lock.notify_all()

    def _on_answer(self, inbound: Inbound[Answer]) -> None:
        answer = inbound.message
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
        """Wait until every prompt the broker acknowledged is answered (a one-shot client's
        prompt that was never acknowledged is not waited for: nothing may hold it)."""
        with self._lock:
            return self._lock.wait_for(
                lambda: all(a.answers for a in self.asked.values() if a.acknowledged),
                timeout_s,
            )

    def first_answer_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first answer that came after it."""
        with self._lock:
            times = [a.answered_at for a in self.asked.values() if a.answered_at is not None]
        later = [t for t in times if t >= moment]
        return min(later) - moment if later else None

    def report(self, name: str, **figures: float) -> Report:
        with self._lock:
            everything = list(self.asked.values())
        items = [a for a in everything if a.acknowledged]
        unacknowledged = [a for a in everything if not a.acknowledged]
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
            ]
            + [
                f"{a.prompt.request_id} lost (sent {a.sent_at - self.started:.1f} s in)"
                for a in items
                if not a.answers
            ],
            unacknowledged=len(unacknowledged),
            unacknowledged_answered=sum(1 for a in unacknowledged if a.answers),
        )


def _problem(answer: Answer) -> str:
    failed = "; ".join(f"{f.expert_id}@{f.agent_id}: {f.reason}" for f in answer.failed)
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
    ) -> LocalFleet:
        assert self.broker is not None
        self.fleet = LocalFleet(
            self.broker.endpoint, name, self.workdir, keepalive_s, telemetry_interval_s=0.5
        )
        for controller in controllers:
            self.fleet.start_controller(controller, controller_args)
        for spec in agents:
            self.fleet.start_agent(spec)
        self.fleet.wait_ready([s.agent_id for s in agents], timeout_s=180)
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
