"""The controller's view of the fleet heals itself and stays cheap under churn (real Mosquitto,
the controller in this process, scripted agents): a cleared status of an agent that sends
telemetry, a flapping agent, and agents that only announce themselves."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from controller.service import Controller
from controller.settings import ControllerSettings
from messages import topics
from messages.answers import Answer
from messages.bus import Bus
from messages.controller import ControllerEvent, FleetPlan
from messages.prompts import Prompt
from moe2.local.broker import LocalBroker
from tests.controller.test_controller_service import text
from tests.helpers import Recorder, ScriptedAgent


@pytest.fixture
def fleet_name() -> str:
    return f"view-{uuid.uuid4().hex[:6]}"


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
def watch(mosquitto: LocalBroker, fleet_name: str) -> Iterator[Recorder]:
    rec = Recorder(mosquitto.endpoint, fleet_name)
    rec.watch(topics.ANSWERS).watch(topics.CONTROLLER_EVENTS).watch(topics.CONTROLLER_PLAN)
    with rec:
        yield rec


@pytest.fixture
def a1(
    mosquitto: LocalBroker, fleet_name: str, controller: Controller, watch: Recorder
) -> Iterator[ScriptedAgent]:
    """An agent that sends telemetry (and so is heard alive) and answers "hello"."""
    agent = ScriptedAgent(
        mosquitto.endpoint, fleet_name, "a1", "e1", text("hello"), telemetry_s=0.3
    )
    agent.start()
    watch.wait_for_plan(lambda p: p.assignments == {"a1": ["e1"]}, 15)
    yield agent
    agent.bus.close()


def _client(mosquitto: LocalBroker, fleet: str) -> Bus:
    bus = Bus(mosquitto.endpoint, fleet, client_id=f"w-{uuid.uuid4().hex[:6]}")
    bus.connect()
    return bus


def _ask(bus: Bus, request_id: str) -> None:
    bus.publish(topics.PROMPTS, Prompt(prompt="q", request_id=request_id)).wait_for_publish(5)


def _answer(watch: Recorder, request_id: str) -> Answer:
    return watch.wait_for_answer(request_id, 20)


def test_a_cleared_status_does_not_forget_an_agent_heard_alive(
    mosquitto: LocalBroker, fleet_name: str, a1: ScriptedAgent, watch: Recorder
) -> None:
    # The scripted agent does not put its status right itself: its telemetry brings it back.
    bus = _client(mosquitto, fleet_name)
    bus.clear_retained(topics.AGENT_STATUS, agent_id="a1")
    watch.wait_for_event(ControllerEvent, "forgotten", agent_id="a1")
    watch.wait_for_event(ControllerEvent, "heard alive", kind="agent_online")
    _ask(bus, "after-clear")
    answer = _answer(watch, "after-clear")
    assert answer.status == "ok" and answer.answer == "hello", answer
    bus.close()


def test_flaps_make_a_few_plans_and_the_agent_comes_back_when_steady(
    mosquitto: LocalBroker,
    fleet_name: str,
    controller: Controller,
    a1: ScriptedAgent,
    watch: Recorder,
) -> None:
    controller.settings.flap_steady_s = 2.0  # let back sooner, for a short test
    controller._damper.steady_s = 2.0
    before = len(watch.messages(FleetPlan))
    for _ in range(20):  # twenty flaps in four seconds
        a1.bus.publish(topics.AGENT_STATUS, a1.status("offline"), agent_id="a1")
        time.sleep(0.1)
        a1.bus.publish(topics.AGENT_STATUS, a1.status("online"), agent_id="a1")
        time.sleep(0.1)
    # held out, then let back once steady: the plan has it again
    held = watch.wait_for_event(ControllerEvent, "held out of the plan")
    assert held.agent_id == "a1"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        plans = watch.messages(FleetPlan)[before:]
        if plans and plans[-1].assignments == {"a1": ["e1"]}:
            break
        time.sleep(0.1)
    time.sleep(1.0)
    plans = watch.messages(FleetPlan)[before:]
    assert plans[-1].assignments == {"a1": ["e1"]}, [p.assignments for p in plans]
    assert len(plans) <= 6, [p.assignments for p in plans]  # was 40, one a change
    bus = _client(mosquitto, fleet_name)
    _ask(bus, "after-flaps")
    assert _answer(watch, "after-flaps").status == "ok"
    bus.close()


def test_agents_that_only_announce_themselves_are_never_planned(
    mosquitto: LocalBroker,
    fleet_name: str,
    controller: Controller,
    a1: ScriptedAgent,
    watch: Recorder,
) -> None:
    ghosts = [
        ScriptedAgent(mosquitto.endpoint, fleet_name, f"g{i}", "e1", text("boo")) for i in range(30)
    ]
    for ghost in ghosts:  # status and capabilities, no telemetry, and they would even answer
        ghost.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(controller.registry.online_experts()) < 31:
        time.sleep(0.1)
    assert len(controller.registry.online_experts()) == 31
    time.sleep(1.0)  # a re-plan window and more
    assert controller.planner.assignments == {"a1": ["e1"]}
    bus = _client(mosquitto, fleet_name)
    for index in range(5):
        _ask(bus, f"q{index}")
    for index in range(5):
        answer = _answer(watch, f"q{index}")
        assert answer.answer == "hello" and [e.agent_id for e in answer.experts] == ["a1"]
    assert all(not ghost.jobs and not ghost.plans for ghost in ghosts)
    bus.close()
    for ghost in ghosts:
        ghost.bus.close()
