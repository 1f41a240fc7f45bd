"""The controller on a real Mosquitto, with scripted agents speaking the agent's protocol."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from controller.service import Controller
from controller.settings import ControllerSettings
from messages import topics
from messages.answers import Answer
from messages.base import now_s
from messages.bus import Bus, Inbound
from messages.controller import ControllerEvent, ControllerStatus, FleetPlan
from messages.jobs import Job
from messages.prompts import Prompt
from messages.results import JobResult, LatencyBreakdown
from messages.telemetry import Telemetry
from moe2.local.broker import LocalBroker
from tests import helpers
from tests.helpers import Behaviour, Recorder


def probs(*p: float) -> Behaviour:
    def answer(job: Job) -> JobResult:
        return _result(job, ok=True, choice_probs=list(p), choice_logprobs=[0.0] * len(p))

    return answer


def text(value: str) -> Behaviour:
    return lambda job: _result(job, ok=True, text=value, completion_tokens=3)


def fail(reason: str) -> Behaviour:
    return lambda job: _result(job, ok=False, error=reason)


def silent(job: Job) -> None:
    return None


def _result(job: Job, **fields: Any) -> JobResult:
    agent = job.expert_id.replace("e", "a")  # e1 lives on a1, e2 on a2
    return JobResult(
        request_id=job.request_id,
        expert_id=job.expert_id,
        agent_id=agent,
        latency=LatencyBreakdown(queue_s=0.0, load_s=0.0, total_s=0.01),
        **fields,
    )


class ScriptedAgent(helpers.ScriptedAgent):
    """The shared scripted agent on a test broker, answering "hello" until told otherwise."""

    def __init__(self, broker: LocalBroker, fleet: str, agent_id: str, expert: str) -> None:
        super().__init__(broker.endpoint, fleet, agent_id, expert, text("hello"))


@pytest.fixture
def fleet_name() -> str:
    return f"ctl-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def controller(mosquitto: LocalBroker, fleet_name: str) -> Iterator[Controller]:
    settings = ControllerSettings.load(
        None, broker=mosquitto.url, fleet=fleet_name, status_interval_s=0.3
    )
    service = Controller(settings)
    service.start()
    yield service
    service.stop()


@pytest.fixture
def agents(
    mosquitto: LocalBroker, fleet_name: str, controller: Controller
) -> Iterator[dict[str, ScriptedAgent]]:
    made = {a: ScriptedAgent(mosquitto, fleet_name, a, e) for a, e in (("a1", "e1"), ("a2", "e2"))}
    for agent in made.values():
        agent.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(controller.planner.assignments) < 2:
        time.sleep(0.05)
    yield made
    for agent in made.values():
        agent.bus.close()


@pytest.fixture
def watch(mosquitto: LocalBroker, fleet_name: str) -> Iterator[Recorder]:
    rec = Recorder(mosquitto.endpoint, fleet_name)
    rec.watch(topics.ANSWERS).watch(topics.CONTROLLER_EVENTS).watch(topics.CONTROLLER_STATUS)
    rec.watch(topics.CONTROLLER_PLAN)
    with rec:
        yield rec


def _ask(mosquitto: LocalBroker, fleet: str, prompt: Prompt) -> None:
    bus = Bus(mosquitto.endpoint, fleet, client_id=f"ask-{uuid.uuid4().hex[:6]}")
    bus.connect()
    bus.publish(topics.PROMPTS, prompt).wait_for_publish(5)
    bus.close()


def test_plans_activate_every_expert(agents: dict[str, ScriptedAgent], watch: Recorder) -> None:
    plan = watch.wait_for_plan(lambda p: len(p.assignments) == 2)
    assert plan.assignments == {"a1": ["e1"], "a2": ["e2"]}
    time.sleep(0.3)
    assert agents["a1"].plans[-1].experts == ["e1"]
    # Each agent holds the plan of the fleet replan that last changed its experts, whichever
    # agent came online first: its epoch is one of the fleet plans', and not newer than them.
    fleet_epochs = {m.epoch for m in watch.messages(FleetPlan)}
    assert agents["a2"].plans[-1].experts == ["e2"]
    for agent in agents.values():
        assert agent.plans[-1].epoch in fleet_epochs and agent.plans[-1].epoch <= max(fleet_epochs)


def test_choice_answers_mix_the_distributions(
    mosquitto: LocalBroker, fleet_name: str, agents: dict[str, ScriptedAgent], watch: Recorder
) -> None:
    agents["a1"].behaviour = probs(0.8, 0.2)
    agents["a2"].behaviour = probs(0.4, 0.6)
    _ask(mosquitto, fleet_name, Prompt(prompt="q", request_id="mix", choices=["A", "B"]))
    answer = watch.wait_for_answer("mix")
    assert answer.status == "ok" and answer.answer == "A" and answer.choice_index == 0
    assert answer.choice_probs == pytest.approx([0.6, 0.4])
    assert sorted(e.weight for e in answer.experts) == [0.5, 0.5]
    assert answer.energy_j is None  # the experts reported none
    job = agents["a1"].jobs[-1]
    assert job.choices == ["A", "B"] and job.timeout_s < 60


def test_a_silent_expert_is_named_failed_at_the_prompts_timeout(
    mosquitto: LocalBroker, fleet_name: str, agents: dict[str, ScriptedAgent], watch: Recorder
) -> None:
    # a1's 0.6 against 0.4 does not decide the choice while a2's half of the weight is out.
    agents["a1"].behaviour = probs(0.6, 0.4)
    agents["a2"].behaviour = silent
    start = time.monotonic()
    ask = Prompt(prompt="q", request_id="late", timeout_s=1.0, choices=["A", "B"])
    _ask(mosquitto, fleet_name, ask)
    answer = watch.wait_for_answer("late")
    assert 0.9 <= time.monotonic() - start < 5
    assert answer.status == "partial" and answer.answer == "A"
    assert [(f.agent_id, f.reason) for f in answer.failed] == [("a2", "no result within 1 s")]


def test_a_failing_expert_is_named_with_its_error(
    mosquitto: LocalBroker, fleet_name: str, agents: dict[str, ScriptedAgent], watch: Recorder
) -> None:
    agents["a1"].behaviour = probs(0.6, 0.4)
    agents["a2"].behaviour = fail("out of memory")
    _ask(mosquitto, fleet_name, Prompt(prompt="q", request_id="oom", choices=["A", "B"]))
    answer = watch.wait_for_answer("oom")
    assert answer.status == "partial" and answer.failed[0].reason == "out of memory"
    assert [e.expert_id for e in answer.experts] == ["e1"] and answer.experts[0].weight == 1.0


def test_answers_do_not_wait_once_the_outcome_is_decided(
    mosquitto: LocalBroker, fleet_name: str, agents: dict[str, ScriptedAgent], watch: Recorder
) -> None:
    # Free text: the first text is the winner (equal weights, earliest wins), so a silent
    # expert is left out at once instead of holding the answer to its deadline.
    agents["a1"].behaviour = text("fine")
    agents["a2"].behaviour = silent
    start = time.monotonic()
    _ask(mosquitto, fleet_name, Prompt(prompt="q", request_id="early", timeout_s=30.0))
    answer = watch.wait_for_answer("early")
    assert time.monotonic() - start < 10
    assert answer.status == "ok" and answer.answer == "fine" and not answer.failed
    assert [(f.agent_id, f.reason) for f in answer.left_out] == [
        ("a2", "outcome decided without it")
    ]
    # Choices with two equal weights: one expert alone never decides (the other could tie it);
    # the rule itself is tested in tests/controller/test_decisions.py.


def test_a_prompt_can_name_the_experts_it_wants(
    mosquitto: LocalBroker, fleet_name: str, agents: dict[str, ScriptedAgent], watch: Recorder
) -> None:
    _ask(mosquitto, fleet_name, Prompt(prompt="q", request_id="only", experts=["e2@a2"]))
    answer = watch.wait_for_answer("only")
    assert [e.expert_id for e in answer.experts] == ["e2"] and not agents["a1"].jobs


def test_a_prompt_naming_an_unknown_expert_is_rejected(
    mosquitto: LocalBroker, fleet_name: str, agents: dict[str, ScriptedAgent], watch: Recorder
) -> None:
    _ask(mosquitto, fleet_name, Prompt(prompt="q", request_id="ghost", experts=["e9"]))
    answer = watch.wait_for_answer("ghost")
    assert answer.status == "rejected" and "unknown expert 'e9'" in (answer.error or "")
    event = watch.wait_for_event(ControllerEvent, request_id="ghost")
    assert event.kind == "rejected"


def test_mqtt5_response_topic_and_correlation_data(
    mosquitto: LocalBroker, fleet_name: str, agents: dict[str, ScriptedAgent]
) -> None:
    got: list[Inbound[Answer]] = []
    bus = Bus(mosquitto.endpoint, fleet_name, client_id=f"asker-{uuid.uuid4().hex[:6]}")
    bus.client.message_callback_add("my/inbox", lambda c, u, m: got.append(m))
    bus.connect()
    bus.client.subscribe("my/inbox", qos=1)
    time.sleep(0.2)
    bus.publish_to(
        topics.PROMPTS.name(fleet_name),
        Prompt(prompt="q"),
        response_topic="my/inbox",
        correlation_data=b"\x01corr",
    )
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    bus.close()
    assert got, "no answer on the response topic"
    assert got[0].properties.CorrelationData == b"\x01corr"
    assert Answer.model_validate_json(got[0].payload).status == "ok"


def test_reply_topics_may_not_be_fleet_control_topics(
    mosquitto: LocalBroker, fleet_name: str, agents: dict[str, ScriptedAgent], watch: Recorder
) -> None:
    plan_topic = topics.AGENT_PLAN.name(fleet_name, agent_id="a1")
    _ask(mosquitto, fleet_name, Prompt(prompt="q", request_id="evil", reply_to=plan_topic))
    event = watch.wait_for_event(ControllerEvent, "fleet topic")
    assert event.kind == "rejected"
    answer = watch.wait_for_answer("evil")
    # The asker hears why on answers/{request_id}; the prompt is not run.
    assert answer.status == "rejected" and "only moe2/" in (answer.error or "")
    time.sleep(0.3)
    assert agents["a1"].rejected == []  # nothing was published on its plan topic


BAD_PAYLOADS = [
    (b"{oops", "not valid JSON"),
    (b'{"unexpected": 1}', "schema"),
    (b"[" + b"1," * 140_000 + b"1]", "over the"),
]


@pytest.mark.parametrize(
    "topic",
    [
        topics.PROMPTS,
        topics.AGENT_STATUS,
        topics.AGENT_CAPABILITIES,
        topics.AGENT_TELEMETRY,
        topics.AGENT_RESULTS,
        topics.CONTROLLER_COSTS,  # another controller's table, kept for a takeover
    ],
    ids=lambda t: t.pattern,
)
def test_bad_payloads_on_every_subscribed_topic_are_reported_and_harmless(
    mosquitto: LocalBroker,
    fleet_name: str,
    controller: Controller,
    agents: dict[str, ScriptedAgent],
    watch: Recorder,
    topic: topics.Topic[Any],
) -> None:
    params = {p: "a1" for p in topic.params}
    name = topic.name(fleet_name, **params)
    bus = Bus(mosquitto.endpoint, fleet_name, client_id=f"bad-{uuid.uuid4().hex[:6]}")
    bus.connect()
    for payload, reason in BAD_PAYLOADS:
        bus.publish_to(name, payload, retain=False).wait_for_publish(5)
        event = watch.wait_for_event(ControllerEvent, reason, kind="rejected", topic=name)
        assert event.time_s > 0
    bus.close()
    status = watch.wait_for_a(ControllerStatus, lambda s: s.rejected.get(topic.pattern) == 3)
    assert status.state == "online"
    assert set(controller.planner.assignments) == {"a1", "a2"}  # nothing accepted was lost
    _ask(mosquitto, fleet_name, Prompt(prompt="q", request_id="after"))
    answer = watch.wait_for_answer("after")
    assert answer.status == "ok" and len(answer.experts) + len(answer.left_out) == 2


def test_bad_text_prompts_are_rejected_and_good_ones_answered(
    mosquitto: LocalBroker, fleet_name: str, agents: dict[str, ScriptedAgent], watch: Recorder
) -> None:
    name = topics.PROMPTS_TEXT.name(fleet_name)
    bus = Bus(mosquitto.endpoint, fleet_name, client_id=f"txt-{uuid.uuid4().hex[:6]}")
    bus.connect()
    for payload, reason in [(b"\xff\xfe", "UTF-8"), (b"   ", "empty"), (b"x" * 300_000, "over")]:
        bus.publish_to(name, payload).wait_for_publish(5)
        watch.wait_for_event(ControllerEvent, reason, topic=name)
    bus.publish_to(name, "What is two plus two?").wait_for_publish(5)
    bus.close()
    answer = watch.wait_for_answer()
    assert answer.status == "ok" and answer.answer == "hello" and len(answer.request_id) == 16


def test_stray_results_and_reused_ids_are_rejected(
    mosquitto: LocalBroker, fleet_name: str, agents: dict[str, ScriptedAgent], watch: Recorder
) -> None:
    agents["a1"].behaviour = silent
    agents["a2"].behaviour = silent
    _ask(mosquitto, fleet_name, Prompt(prompt="q", request_id="dup", timeout_s=2))
    time.sleep(0.3)
    _ask(mosquitto, fleet_name, Prompt(prompt="other", request_id="dup", timeout_s=2))
    watch.wait_for_event(ControllerEvent, "already in use")
    job = agents["a1"].jobs[-1]
    stray = JobResult(
        request_id="dup",
        expert_id="e2",
        agent_id="a1",
        ok=True,
        text="x",
        latency=LatencyBreakdown(queue_s=0, load_s=0, total_s=0),
    )
    agents["a1"].bus.publish(topics.AGENT_RESULTS, stray, agent_id="a1")
    watch.wait_for_event(ControllerEvent, "did not ask e2@a1")
    # The first text decides a free-text answer (equal weights): a2 is left out, not awaited;
    # the same result again (a re-sent job answers with it) and later ones are counted late.
    agents["a1"].bus.publish(topics.AGENT_RESULTS, text("ok")(job), agent_id="a1")
    agents["a1"].bus.publish(topics.AGENT_RESULTS, text("ok")(job), agent_id="a1")
    answer = watch.wait_for_answer("dup")
    assert answer.status == "ok" and answer.answer == "ok"
    assert [f.agent_id for f in answer.left_out] == ["a2"]
    agents["a1"].bus.publish(topics.AGENT_RESULTS, text("ok")(job), agent_id="a1")
    status = watch.wait_for_a(ControllerStatus, lambda s: s.late_results >= 2)
    assert status.state == "online" and status.role == "active"
    assert len([m for m in watch.messages(Answer) if m.request_id == "dup"]) == 1


def test_offline_agents_leave_the_plan_and_prompts_go_to_the_rest(
    mosquitto: LocalBroker, fleet_name: str, agents: dict[str, ScriptedAgent], watch: Recorder
) -> None:
    agents["a2"].bus.client._sock.close()  # vanishes: the broker publishes its will
    agents["a2"].bus.client.loop_stop()
    event = watch.wait_for_event(ControllerEvent, kind="agent_offline", timeout_s=15)
    assert event.agent_id == "a2"
    plan = watch.wait_for_plan(lambda p: list(p.assignments) == ["a1"])
    assert plan.assignments == {"a1": ["e1"]}
    _ask(mosquitto, fleet_name, Prompt(prompt="q", request_id="rest"))
    answer = watch.wait_for_answer("rest")
    assert answer.status == "ok" and [e.agent_id for e in answer.experts] == ["a1"]


def test_telemetry_silence_marks_an_agent_offline(
    controller: Controller, agents: dict[str, ScriptedAgent], watch: Recorder
) -> None:
    # The scripted agents never send telemetry: after max(3 x 0.5 s, 1.5 x 5 s) they are gone.
    a1 = agents["a1"]
    telemetry = Telemetry(
        agent_id="a1",
        time_s=now_s(),
        memory_used_bytes=0,
        process_rss_bytes=0,
        queue_depth=0,
        busy=False,
        loaded_experts=["e1"],
        jobs_done=0,
        jobs_failed=0,
    )
    a1.bus.publish(topics.AGENT_TELEMETRY, telemetry, agent_id="a1")
    event = watch.wait_for_event(ControllerEvent, kind="agent_offline", agent_id="a1", timeout_s=12)
    assert "no message for 7.5 s" in event.reason
    a1.bus.publish(topics.AGENT_TELEMETRY, telemetry, agent_id="a1")
    back = watch.wait_for_event(ControllerEvent, "resumed", kind="agent_online", agent_id="a1")
    assert back


def test_no_active_expert_gives_a_failed_answer(
    mosquitto: LocalBroker, fleet_name: str, controller: Controller, watch: Recorder
) -> None:
    _ask(mosquitto, fleet_name, Prompt(prompt="q", request_id="empty"))
    answer = watch.wait_for_answer("empty")
    assert answer.status == "failed" and answer.error == "no active expert can answer"


def test_a_prompt_waits_for_a_fleet_that_is_coming_back(
    mosquitto: LocalBroker, fleet_name: str, agents: dict[str, ScriptedAgent], watch: Recorder
) -> None:
    # Every agent's will arrives at once (a broker going down), then a prompt: it is not
    # answered "failed" at once but waits; the agents announce themselves again and answer it.
    watch.wait_for_plan(lambda p: len(p.assignments) == 2)
    for agent in agents.values():
        agent.bus.publish(topics.AGENT_STATUS, agent.status("offline"), agent_id=agent.agent_id)
    watch.wait_for_plan(lambda p: p.assignments == {}, timeout_s=10)
    _ask(mosquitto, fleet_name, Prompt(prompt="q", request_id="back"))
    time.sleep(1.5)
    assert not [m for m in watch.messages(Answer) if m.request_id == "back"]
    for agent in agents.values():
        agent.bus.publish(topics.AGENT_STATUS, agent.status("online"), agent_id=agent.agent_id)
    answer = watch.wait_for_answer("back")
    assert answer.status == "ok" and answer.answer == "hello"
