"""The agent on a real Mosquitto: status and will, plans, jobs, bad input."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from agent.service import Agent
from agent.settings import AgentSettings
from messages import topics
from messages.base import now_s
from messages.bus import Bus
from messages.capabilities import AgentCapabilities
from messages.events import AgentEvent
from messages.jobs import Job
from messages.plan import ActivationPlan
from messages.results import JobResult
from messages.status import AgentStatus
from messages.telemetry import Telemetry
from moe2.local.broker import LocalBroker
from tests.conftest import GEMMA3, SMOLLM2
from tests.helpers import Recorder

FLEET = "agent-test"


@pytest.fixture(scope="module")
def agent(mosquitto: LocalBroker) -> Iterator[Agent]:
    settings = AgentSettings.load(
        None,
        broker=mosquitto.url,
        fleet=FLEET,
        agent_id="unit",
        experts=[SMOLLM2, GEMMA3],
        telemetry_interval_s=0.3,
        job_queue_capacity=2,
    )
    service = Agent(settings)
    service.start()
    yield service
    service.stop()


@pytest.fixture
def recorder(mosquitto: LocalBroker) -> Iterator[Recorder]:
    rec = Recorder(mosquitto.endpoint, FLEET)
    for topic in (
        topics.AGENT_STATUS,
        topics.AGENT_CAPABILITIES,
        topics.AGENT_TELEMETRY,
        topics.AGENT_RESULTS,
        topics.AGENT_EVENTS,
    ):
        rec.watch(topic, agent_id="unit")
    with rec:
        yield rec


@pytest.fixture
def sender(mosquitto: LocalBroker) -> Iterator[Bus]:
    bus = Bus(mosquitto.endpoint, FLEET, client_id=f"sender-{time.monotonic_ns()}")
    bus.connect()
    yield bus
    bus.close()


def _job(request_id: str, expert: str = "smollm2", **kw: object) -> Job:
    fields: dict[str, object] = dict(
        request_id=request_id,
        expert_id=expert,
        prompt="The capital of France is",
        choices=["Berlin", "Paris"],
        timeout_s=30.0,
        issued_s=now_s(),
    )
    fields.update(kw)
    return Job(**fields)  # type: ignore[arg-type]


def _plan(epoch: int, experts: list[str]) -> ActivationPlan:
    return ActivationPlan(agent_id="unit", epoch=epoch, experts=experts, time_s=now_s())


def test_announces_itself_retained(agent: Agent, recorder: Recorder) -> None:
    status = recorder.wait_for_a(AgentStatus)
    assert status.state == "online" and status.keepalive_s == agent.settings.keepalive_s
    caps = recorder.wait_for_a(AgentCapabilities)
    assert {e.expert_id for e in caps.experts} == {"smollm2", "gemma3"}
    assert caps.power_sensor == "none"
    assert all(e.file_size_bytes > 10_000_000 for e in caps.experts)


def test_obeys_plans_and_ignores_stale_or_unknown_ones(
    agent: Agent, recorder: Recorder, sender: Bus
) -> None:
    sender.publish(topics.AGENT_PLAN, _plan(10, ["smollm2", "gemma3"]), agent_id="unit")
    recorder.wait_for_a(
        Telemetry,
        lambda t: t.plan_epoch == 10 and t.loaded_experts == ["gemma3", "smollm2"],
        timeout_s=60,
    )
    sender.publish(topics.AGENT_PLAN, _plan(11, ["smollm2"]), agent_id="unit")
    recorder.wait_for_a(Telemetry, lambda t: t.plan_epoch == 11 and t.loaded_experts == ["smollm2"])
    sender.publish(topics.AGENT_PLAN, _plan(5, ["gemma3"]), agent_id="unit")
    stale = recorder.wait_for_event(AgentEvent, "older")
    assert stale.kind == "rejected"
    sender.publish(topics.AGENT_PLAN, _plan(12, ["smollm2", "nope"]), agent_id="unit")
    unknown = recorder.wait_for_event(AgentEvent, "nope")
    assert unknown.kind == "rejected"
    time.sleep(0.8)
    assert agent.plan_epoch == 11 and agent.pool.loaded_ids == ["smollm2"]
    caps = [m for m in recorder.messages(AgentCapabilities) if m.experts[0].quantisation]
    assert caps and caps[-1].experts[0].memory_bytes  # learnt at load, republished


def test_runs_jobs_and_reports_latency(agent: Agent, recorder: Recorder, sender: Bus) -> None:
    sender.publish(topics.AGENT_JOBS, _job("r-choice"), agent_id="unit")
    sender.publish(
        topics.AGENT_JOBS,
        _job("r-text", choices=None, prompt="Say hello.", max_tokens=6),
        agent_id="unit",
    )
    scored = recorder.wait_for_result("r-choice", 60)
    assert scored.ok and scored.choice_probs[1] > 0.9 and scored.finish_reason == "scored"
    if agent.sensor is None:  # no sensor and no declared model: absent, never invented
        assert scored.energy is None
    else:  # a machine with RAPL, say: measured, with its source
        assert scored.energy is not None and scored.energy.source == agent.sensor.source
        assert scored.energy.estimated == (not agent.sensor.measured)
    text = recorder.wait_for_result("r-text", 60)
    assert text.ok and text.text and 1 <= text.completion_tokens <= 6
    lat = text.latency
    assert lat.first_token_s is not None and lat.queue_s <= lat.first_token_s <= lat.total_s


def test_loads_an_unplanned_expert_on_demand_and_counts_it(
    agent: Agent, recorder: Recorder, sender: Bus
) -> None:
    agent.pool.unload("gemma3")
    sender.publish(topics.AGENT_JOBS, _job("r-load", expert="gemma3"), agent_id="unit")
    result = recorder.wait_for_result("r-load", 60)
    assert result.ok and result.latency.load_s > 0


def test_bad_jobs_get_error_results_and_the_agent_carries_on(
    agent: Agent, recorder: Recorder, sender: Bus
) -> None:
    sender.publish(topics.AGENT_JOBS, _job("r-unknown", expert="ghost"), agent_id="unit")
    unknown = recorder.wait_for_result("r-unknown")
    assert not unknown.ok and "unknown expert 'ghost'" in (unknown.error or "")
    name = topics.AGENT_JOBS.name(FLEET, agent_id="unit")
    for payload, expect in [
        (b"{not json", "not valid JSON"),
        (b'{"request_id": "x"}', "does not match Job schema"),
        (b"x" * (300 * 1024), "over the"),
    ]:
        sender.publish_to(name, payload)
        event = recorder.wait_for_event(AgentEvent, expect)
        assert event.kind == "rejected" and event.topic == name
    too_long = _job("r-long", choices=None, prompt="word " * 2000)
    sender.publish(topics.AGENT_JOBS, too_long, agent_id="unit")
    failed = recorder.wait_for_result("r-long")
    assert not failed.ok and "PromptTooLong" in (failed.error or "")
    sender.publish(topics.AGENT_JOBS, _job("r-after"), agent_id="unit")
    after = recorder.wait_for_result("r-after", 60)
    assert after.ok


def test_bad_plans_are_reported_and_the_current_plan_stays(
    agent: Agent, recorder: Recorder, sender: Bus
) -> None:
    epoch, loaded = agent.plan_epoch, agent.pool.loaded_ids
    name = topics.AGENT_PLAN.name(FLEET, agent_id="unit")
    for payload, expect in [
        (b"\x00\x01", "not valid JSON"),
        (b'{"agent_id": "unit", "epoch": -1, "experts": [], "time_s": 0}', "epoch"),
        (b'{"agent_id": "unit", "epoch": "7", "experts": [], "time_s": 0}', "valid integer"),
        (b" " * (257 * 1024), "over the"),
    ]:
        sender.publish_to(name, payload)  # not retained: the agent's retained plan stays
        event = recorder.wait_for_event(AgentEvent, expect)
        assert event.kind == "rejected"
    other = ActivationPlan(agent_id="someone-else", epoch=10**15, experts=[], time_s=now_s())
    sender.publish_to(name, other)
    recorder.wait_for_event(AgentEvent, "someone-else")
    time.sleep(0.5)
    assert agent.plan_epoch == epoch and agent.pool.loaded_ids == loaded


def test_full_queue_and_expired_jobs_fail_fast(
    agent: Agent, recorder: Recorder, sender: Bus
) -> None:
    slow = dict(choices=None, prompt="Count from one to one hundred.", max_tokens=48)
    for i in range(5):  # capacity 2: at least two are turned away at once
        sender.publish(topics.AGENT_JOBS, _job(f"r-q{i}", **slow), agent_id="unit")
    full = recorder.wait_for_a(JobResult, lambda r: "queue full" in (r.error or ""), 30)
    assert not full.ok
    for i in range(5):  # every job is answered, turned away or not
        recorder.wait_for_result(f"r-q{i}", 60)
    sender.publish(topics.AGENT_JOBS, _job("r-busy", **slow), agent_id="unit")
    sender.publish(topics.AGENT_JOBS, _job("r-expire", timeout_s=0.05), agent_id="unit")
    expired = recorder.wait_for_result("r-expire", 60)
    assert not expired.ok and "deadline" in (expired.error or "")


def test_will_marks_the_agent_offline_when_it_vanishes(mosquitto: LocalBroker) -> None:
    settings = AgentSettings.load(
        None, broker=mosquitto.url, fleet=FLEET, agent_id="ghost", experts=[SMOLLM2]
    )
    ghost = Agent(settings)
    ghost.start()
    rec = Recorder(mosquitto.endpoint, FLEET).watch(topics.AGENT_STATUS, agent_id="ghost")
    with rec:
        rec.wait_for_a(AgentStatus, lambda s: s.state == "online")
        ghost.bus.client._sock.close()  # the connection drops without a DISCONNECT
        ghost.bus.client.loop_stop()
        offline = rec.wait_for_a(AgentStatus, lambda s: s.state == "offline", timeout_s=15)
    assert offline.reason == "connection lost"
    ghost._stop.set()


def test_declared_power_model_gives_estimated_energy(mosquitto: LocalBroker) -> None:
    settings = AgentSettings.load(
        None,
        broker=mosquitto.url,
        fleet=FLEET,
        agent_id="estimator",
        experts=[SMOLLM2],
        power_model_w=15.0,
    )
    estimator = Agent(settings)
    estimator.start()
    try:
        rec = Recorder(mosquitto.endpoint, FLEET).watch(topics.AGENT_RESULTS, agent_id="estimator")
        with rec:
            bus = Bus(mosquitto.endpoint, FLEET, client_id=f"est-{time.monotonic_ns()}")
            bus.connect()
            bus.publish(topics.AGENT_JOBS, _job("r-est"), agent_id="estimator")
            result = rec.wait_for_result("r-est", 60)
            bus.close()
    finally:
        estimator.stop()
    assert result.ok and result.energy is not None
    if estimator.sensor is not None and estimator.sensor.measured:
        pytest.skip(f"this machine has a {estimator.sensor.source} sensor: energy is measured")
    assert result.energy.source == "estimate" and result.energy.estimated
    compute_s = result.latency.total_s - result.latency.queue_s
    assert result.energy.energy_j == pytest.approx(15.0 * compute_s, rel=0.05)


def test_memory_budget_refuses_plans_and_loads_that_do_not_fit(mosquitto: LocalBroker) -> None:
    # SmolLM2 takes ~97 MB resident, Gemma 3 270M ~250 MB: 200 MB holds the first only.
    settings = AgentSettings.load(
        None,
        broker=mosquitto.url,
        fleet=FLEET,
        agent_id="tight",
        experts=[SMOLLM2, GEMMA3],
        expert_memory_budget_mb=200.0,
    )
    tight = Agent(settings)
    tight.start()
    rec = Recorder(mosquitto.endpoint, FLEET)
    for topic in (topics.AGENT_EVENTS, topics.AGENT_RESULTS, topics.AGENT_CAPABILITIES):
        rec.watch(topic, agent_id="tight")
    try:
        with rec:
            caps = rec.wait_for_a(AgentCapabilities)
            assert caps.expert_memory_budget_bytes == 200_000_000
            bus = Bus(mosquitto.endpoint, FLEET, client_id=f"tight-{time.monotonic_ns()}")
            bus.connect()
            plan = ActivationPlan(
                agent_id="tight", epoch=1, experts=["smollm2", "gemma3"], time_s=now_s()
            )
            bus.publish(topics.AGENT_PLAN, plan, agent_id="tight")
            refused = rec.wait_for_event(AgentEvent, "over this")
            assert refused.kind == "rejected"
            fits = ActivationPlan(agent_id="tight", epoch=2, experts=["smollm2"], time_s=now_s())
            bus.publish(topics.AGENT_PLAN, fits, agent_id="tight")
            rec.wait_for_event(AgentEvent, kind="plan_applied", timeout_s=60)
            bus.publish(topics.AGENT_JOBS, _job("r-gemma", expert="gemma3"), agent_id="tight")
            result = rec.wait_for_result("r-gemma")
            bus.close()
            assert tight.pool.loaded_ids == ["smollm2"]  # the refused plan and load left no trace
    finally:
        tight.stop()
        bus_clean = Bus(mosquitto.endpoint, FLEET, client_id=f"clean-{time.monotonic_ns()}")
        bus_clean.connect()
        bus_clean.clear_retained(topics.AGENT_PLAN, agent_id="tight")
        bus_clean.close()
    assert not result.ok and "MemoryBudgetExceeded" in (result.error or "")


def test_plans_never_go_back_in_term_and_stale_jobs_are_dropped(
    agent: Agent, recorder: Recorder, sender: Bus
) -> None:
    """A plan of a higher leadership term is taken whatever its epoch; a plan of a lower term
    (a frozen controller's, flushed late) is refused however high its epoch, and so are its
    jobs and cancels."""
    took_over = _plan(3, ["smollm2"]).model_copy(update={"term": 2})
    sender.publish(topics.AGENT_PLAN, took_over, agent_id="unit")
    recorder.wait_for_a(Telemetry, lambda t: t.plan_term == 2 and t.plan_epoch == 3, timeout_s=30)
    stale = _plan(10**12, ["gemma3"]).model_copy(update={"term": 1})
    sender.publish(topics.AGENT_PLAN, stale, agent_id="unit")
    refused = recorder.wait_for_event(AgentEvent, "older")
    assert refused.kind == "rejected" and "term 1" in refused.reason
    sender.publish(topics.AGENT_JOBS, _job("old-term", term=1), agent_id="unit")
    dropped = recorder.wait_for_event(AgentEvent, "old-term")
    assert dropped.kind == "rejected" and "term 1" in dropped.reason
    sender.publish(topics.AGENT_JOBS, _job("this-term", term=2), agent_id="unit")
    result = recorder.wait_for_result("this-term", timeout_s=30)
    assert result.ok
    time.sleep(0.5)
    assert agent.plan_order == (2, 3) and agent.pool.loaded_ids == ["smollm2"]
    assert not [m for m in recorder.messages(JobResult) if m.request_id == "old-term"]
