"""Fair dispatch over expert slots: a job goes only to an expert with a free slot (its
``parallel``), the rest wait in the controller's queue, replicas share the load, and a prompt
without a gate goes to one replica of each expert."""

from __future__ import annotations

import random
import time
import uuid

from controller.decisions import one_replica_each
from controller.dispatch import Actions, Dispatcher, Route
from controller.ledger import Entry, ReplyRoute
from controller.service import Controller
from controller.settings import ControllerSettings
from messages import topics
from messages.prompts import Prompt
from messages.results import JobResult, LatencyBreakdown
from moe2.local.broker import LocalBroker
from tests.controller.test_controller_service import ScriptedAgent, _ask, silent, text

# smol: two replicas with 3 and 2 slots; tiny: one replica with 1 slot, beside smol on a1
ACTIVE = [("a1", "smol"), ("a2", "smol"), ("a1", "tiny")]
SLOTS = {("a1", "smol"): 3, ("a2", "smol"): 2, ("a1", "tiny"): 1}


def make(experts: list[str] | None = None, window: int = 100) -> Dispatcher:
    def router(prompt: Prompt, load: dict[str, int]) -> Route:
        active = [p for p in ACTIVE if experts is None or p[1] in experts]
        return Route(one_replica_each(active, load), [], None, None)

    def replicas(expert: str) -> list[str]:
        return [a for a, e in ACTIVE if e == expert]

    return Dispatcher(
        router,
        replicas,
        lambda agent: window,
        max_queued=1000,
        slots=lambda agent, expert: SLOTS[(agent, expert)],
    )


def entry(rid: str) -> Entry:
    prompt = Prompt(prompt="q", request_id=rid, timeout_s=60.0)
    return Entry(rid, prompt, [ReplyRoute("inbox/x")], received_s=1000.0, fingerprint=rid)


def result(agent: str, expert: str, rid: str) -> JobResult:
    return JobResult(
        request_id=rid,
        expert_id=expert,
        agent_id=agent,
        ok=True,
        text="t",
        latency=LatencyBreakdown(queue_s=0, load_s=0, total_s=0.1),
    )


def test_jobs_go_only_to_free_slots_and_replicas_share_the_load() -> None:
    d = make(["smol"])
    sent = []
    for i in range(8):
        sent += d.admit(entry(f"r{i}"), 0.0, 1000.0).jobs
    per_agent = {a: sum(1 for b, _ in sent if b == a) for a in ("a1", "a2")}
    assert per_agent == {"a1": 3, "a2": 2}  # every slot of both replicas, no more
    assert d.counts() == (3, 5)  # three prompts wait in the controller's queue
    actions, _ = d.on_result(result("a2", "smol", sent[1][1].request_id), 1.0)
    assert [(a, j.request_id) for a, j in actions.jobs] == [("a2", "r5")]  # the freed slot


def test_the_controller_never_sends_a_job_to_a_full_expert() -> None:
    """Random arrivals and results: outstanding jobs per (agent, expert) never pass its slots,
    and every prompt is answered."""
    rng = random.Random(3)
    d = make()
    outstanding: dict[tuple[str, str], list[str]] = {p: [] for p in SLOTS}
    answered = 0
    next_id = 0

    def settle(actions: Actions) -> None:
        nonlocal answered
        for agent, cancel in actions.cancels:  # decided early: the job is called back
            outstanding[(agent, cancel.expert_id or "")].remove(cancel.request_id)
        for agent, job in actions.jobs:
            outstanding[(agent, job.expert_id)].append(job.request_id)
            assert len(outstanding[(agent, job.expert_id)]) <= SLOTS[(agent, job.expert_id)]
        answered += len(actions.answers)

    for step in range(400):
        if next_id < 60 and rng.random() < 0.6:
            actions = d.admit(entry(f"r{next_id}"), float(step), 1000.0)
            next_id += 1
        else:
            busy = [p for p, rids in outstanding.items() if rids]
            if not busy:
                continue
            pair = rng.choice(busy)
            rid = outstanding[pair].pop(rng.randrange(len(outstanding[pair])))
            actions, refusal = d.on_result(result(*pair, rid), float(step))
            assert refusal is None
        settle(actions)
    while any(outstanding.values()):
        pair = next(p for p, rids in outstanding.items() if rids)
        actions, _ = d.on_result(result(*pair, outstanding[pair].pop(0)), 1000.0)
        settle(actions)
    assert answered == next_id == 60 and d.counts() == (0, 0)


def test_a_prompt_without_a_gate_goes_to_one_replica_of_each_expert() -> None:
    d = make()
    jobs = d.admit(entry("r0"), 0.0, 1000.0).jobs
    assert sorted((a, j.expert_id) for a, j in jobs) == [("a1", "smol"), ("a1", "tiny")]
    # tiny's one slot is taken, so the next prompt waits whole (a prompt goes to all its
    # experts at once, or waits) until tiny answers
    assert d.admit(entry("r1"), 0.0, 1000.0).jobs == []
    assert d.counts() == (1, 1)
    actions, _ = d.on_result(result("a1", "tiny", "r0"), 1.0)
    # tiny's text decides r0 (its smol job is called back): a1 is free again, r1 goes there
    assert [(a, c.request_id) for a, c in actions.cancels] == [("a1", "r0")]
    assert sorted((a, j.expert_id, j.request_id) for a, j in actions.jobs) == [
        ("a1", "smol", "r1"),
        ("a1", "tiny", "r1"),
    ]


def test_the_controller_holds_what_an_experts_slots_cannot_take(mosquitto: LocalBroker) -> None:
    """A real controller and a scripted agent announcing one slot (parallel 1): of three
    prompts one job goes out, two wait in the controller's queue, and the next goes out when
    the result comes back."""
    fleet = f"slots-{uuid.uuid4().hex[:6]}"
    settings = ControllerSettings.load(
        None, broker=mosquitto.url, fleet=fleet, status_interval_s=0.3
    )
    controller = Controller(settings)
    controller.start()
    agent = ScriptedAgent(mosquitto, fleet, "a1", "e1")
    agent.behaviour = silent
    try:
        agent.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not controller.planner.assignments:
            time.sleep(0.05)
        for i in range(3):
            _ask(mosquitto, fleet, Prompt(prompt="q", request_id=f"s{i}"))
        time.sleep(1.0)
        assert [j.request_id for j in agent.jobs] == ["s0"]
        assert controller.dispatcher.counts() == (2, 1)
        agent.bus.publish(topics.AGENT_RESULTS, text("hi")(agent.jobs[0]), agent_id="a1")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(agent.jobs) < 2:
            time.sleep(0.05)
        time.sleep(0.3)
        assert [j.request_id for j in agent.jobs] == ["s0", "s1"]
    finally:
        agent.bus.close()
        controller.stop()
