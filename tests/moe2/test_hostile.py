"""One message must never take the fleet down (issue: hostile input). A real controller and a
real SmolLM2 agent (separate processes) on a real Mosquitto; a hostile client sends one
message; then another client's valid prompt is answered within 5 s, nothing lands where it
should not, and the hostile sender hears a clear refusal where it can be told.

The secure broker's share (client ids bound to logins, clients confined to their own prompt
topics and replies) is in tests/firmware_setup/test_secure_broker.py."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from messages.answers import Answer
from messages.base import now_s
from messages.plan import ActivationPlan
from messages.status import AgentStatus
from moe2.local.broker import LocalBroker
from moe2.local.drills import SMOLLM2, Traffic, choice_prompt
from moe2.local.fleet import AgentSpec, LocalFleet

FLEET = "hostile"
PREFIX = f"moe2/{FLEET}"


class Raw:
    """A bare MQTT 5 client: publishes anything, keeps everything it hears."""

    def __init__(self, broker: LocalBroker, *filters: str) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"moe2-raw-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_message = self._keep
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        for topic_filter in filters:
            self.client.subscribe(topic_filter, qos=1)
        time.sleep(0.3)

    def _keep(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.got.append((msg.topic, msg.payload))
            self.cond.notify_all()

    def publish(
        self, topic: str, payload: bytes | str, response_topic: str | None = None, **kw: Any
    ) -> None:
        props = None
        if response_topic is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
            props.CorrelationData = b"hostile"
        self.client.publish(topic, payload, qos=1, properties=props, **kw).wait_for_publish(5)

    def answer(self, topic: str, timeout_s: float = 10.0) -> Answer:
        with self.cond:
            found = self.cond.wait_for(lambda: any(t == topic for t, _ in self.got), timeout_s)
            assert found, f"nothing on {topic} within {timeout_s} s; got {[t for t, _ in self.got]}"
            return Answer.model_validate_json(next(p for t, p in self.got if t == topic))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(scope="module")
def fleet(mosquitto: LocalBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    workdir = tmp_path_factory.mktemp("hostile")
    local = LocalFleet(mosquitto.endpoint, FLEET, workdir, keepalive_s=5, telemetry_interval_s=0.5)
    local.start_controller("c1")
    local.start_agent(AgentSpec("h-a", [SMOLLM2]))
    try:
        local.wait_ready(["h-a"], timeout_s=120)
        yield local
    finally:
        local.stop()


def _still_serving(fleet: LocalFleet) -> None:
    """Another client's valid prompt is answered ok within 5 s, and no process died."""
    with Traffic(fleet.endpoint, FLEET) as other:
        other.send(choice_prompt(timeout_s=30))
        assert other.wait_all(5.0), "the next valid prompt was not answered within 5 s"
        report = other.report("after")
    assert report.statuses == {"ok": 1}, report.line()
    for name, proc in fleet.processes.items():
        assert proc.poll() is None, f"{name} exited:\n{fleet.log_tail(name)}"
    assert "Traceback" not in fleet.log_tail("c1", 400)


def test_1_control_character_reply_route_is_refused_not_published(
    fleet: LocalFleet, mosquitto: LocalBroker
) -> None:
    spy = Raw(mosquitto, f"{PREFIX}/answers/#", "#")
    spy.publish(
        f"{PREFIX}/prompts",
        json.dumps({"prompt": "q", "request_id": "ctl1", "reply_to": "inbox/\u0001x"}),
    )
    answer = spy.answer(f"{PREFIX}/answers/ctl1")
    assert answer.status == "rejected" and "U+0001" in (answer.error or "")
    assert not any("\u0001" in t for t, _ in spy.got)
    spy.close()
    _still_serving(fleet)


def test_2_a_prompt_too_large_once_escaped_is_refused(
    fleet: LocalFleet, mosquitto: LocalBroker
) -> None:
    spy = Raw(mosquitto, f"{PREFIX}/answers/#")
    spy.publish(f"{PREFIX}/prompts/text", "\u0001" * 200_000)
    with spy.cond:
        assert spy.cond.wait_for(lambda: bool(spy.got), 10)
    answer = Answer.model_validate_json(spy.got[0][1])
    assert answer.status == "rejected" and "over the" in (answer.error or "")
    spy.close()
    _still_serving(fleet)


def test_3_a_login_cannot_route_its_answer_into_another_inbox(
    fleet: LocalFleet, mosquitto: LocalBroker
) -> None:
    spy = Raw(mosquitto, f"{PREFIX}/replies/#")
    forged = {"prompt": "q", "request_id": "steal", "reply_to": f"{PREFIX}/replies/c2/q1"}
    spy.publish(f"{PREFIX}/clients/c1/prompts", json.dumps(forged))
    answer = spy.answer(f"{PREFIX}/replies/c1/steal")
    assert answer.status == "rejected" and f"{PREFIX}/replies/c1/" in (answer.error or "")
    time.sleep(0.5)
    assert not [t for t, _ in spy.got if t.startswith(f"{PREFIX}/replies/c2/")]
    spy.close()
    _still_serving(fleet)


def test_5_out_of_range_numbers_in_results_are_refused(
    fleet: LocalFleet, mosquitto: LocalBroker
) -> None:
    spy = Raw(mosquitto)
    result = {
        "request_id": "r1",
        "expert_id": "smollm2",
        "agent_id": "h-a",
        "ok": True,
        "text": "x",
        "latency": {"queue_s": 0, "load_s": 0, "total_s": 0},
        "energy": {"energy_j": 1.7e308, "source": "nvml"},
    }
    spy.publish(f"{PREFIX}/agents/h-a/results", json.dumps(result))
    spy.close()
    _still_serving(fleet)


def test_6_absurd_plan_epoch_and_forged_offline_status_do_not_wedge_the_agent(
    fleet: LocalFleet, mosquitto: LocalBroker
) -> None:
    spy = Raw(mosquitto, f"{PREFIX}/agents/h-a/events", f"{PREFIX}/agents/h-a/status")
    huge = {"agent_id": "h-a", "epoch": 10**30, "experts": [], "time_s": now_s()}
    spy.publish(f"{PREFIX}/agents/h-a/plan", json.dumps(huge))
    # A well-formed plan from no controller (anyone can, on an open broker): it is taken, and
    # the controller puts its own plan back when the agent's telemetry shows another epoch.
    stray = ActivationPlan(agent_id="h-a", epoch=2**52, experts=[], time_s=now_s())
    spy.publish(f"{PREFIX}/agents/h-a/plan", stray.model_dump_json())
    forged = AgentStatus(
        agent_id="h-a",
        state="offline",
        version="x",
        time_s=now_s(),
        keepalive_s=5,
        telemetry_interval_s=0.5,
        reason="forged",
    )
    spy.publish(f"{PREFIX}/agents/h-a/status", forged.model_dump_json(), retain=True)
    time.sleep(1.0)
    with spy.cond:
        events = [json.loads(p) for t, p in spy.got if t.endswith("/events")]
        statuses = [json.loads(p) for t, p in spy.got if t.endswith("/status")]
    assert any("epoch" in e["reason"] for e in events), events
    assert statuses[-1]["state"] == "online"  # the agent put its own status right
    spy.close()
    _still_serving(fleet)
    # Within a resync period the agent holds the controller's plan again.
    deadline = time.monotonic() + 15
    loaded: list[str] = []
    while time.monotonic() < deadline:
        from moe2.client.fleet_reader import read_fleet

        registry, plan = read_fleet(fleet.endpoint, FLEET, 1.0)
        record = {r.agent_id: r for r in registry.agents()}["h-a"]
        loaded = record.telemetry.loaded_experts if record.telemetry else []
        if loaded == ["smollm2"] and record.online:
            break
    assert loaded == ["smollm2"]


def test_7_a_refused_prompt_is_answered_on_its_reply_route(
    fleet: LocalFleet, mosquitto: LocalBroker
) -> None:
    spy = Raw(mosquitto, "inbox/#", f"{PREFIX}/replies/c1/#")
    # A request id that is no topic level: refused, and told so on its response topic.
    spy.publish(f"{PREFIX}/prompts", json.dumps({"prompt": "q", "request_id": "a/b"}), "inbox/7")
    answer = spy.answer("inbox/7")
    assert answer.status == "rejected" and "request_id" in (answer.error or "")
    # Two askers with one request id: the second hears it is taken.
    first = {"prompt": "Name three colours.", "request_id": "same", "max_tokens": 24}
    spy.publish(f"{PREFIX}/prompts", json.dumps(first), "inbox/first")
    spy.publish(f"{PREFIX}/prompts", json.dumps({**first, "prompt": "other"}), "inbox/second")
    assert spy.answer("inbox/second").status == "rejected"
    assert spy.answer("inbox/first", 30).status == "ok"
    # A login's bare text prompt is answered under its own replies.
    spy.publish(f"{PREFIX}/clients/c1/prompts/text", "The capital of France is")
    with spy.cond:
        assert spy.cond.wait_for(
            lambda: any(t.startswith(f"{PREFIX}/replies/c1/") for t, _ in spy.got), 30
        )
    spy.close()
    _still_serving(fleet)


def test_8_oversized_and_overlong_input_leaves_no_traceback(
    fleet: LocalFleet, mosquitto: LocalBroker
) -> None:
    spy = Raw(mosquitto, f"{PREFIX}/answers/#")
    spy.publish(
        f"{PREFIX}/prompts",
        json.dumps({"prompt": "q", "request_id": "long", "reply_to": "r" * 70_000}),
    )
    answer = spy.answer(f"{PREFIX}/answers/long")
    assert answer.status == "rejected" and "longer than" in (answer.error or "")
    caps = {"agent_id": "h-a", "cpu_count": 10**400}
    spy.publish(f"{PREFIX}/agents/h-a/capabilities", json.dumps(caps)[:-1] + "}")
    spy.close()
    _still_serving(fleet)


def test_the_controller_log_names_the_refusals(fleet: LocalFleet) -> None:
    log = Path(fleet.workdir / "c1.log").read_text(errors="replace")
    assert "rejected payload" in log


def test_a_long_choice_job_with_a_short_deadline_stops_at_its_deadline(
    fleet: LocalFleet, mosquitto: LocalBroker
) -> None:
    spy = Raw(mosquitto, f"{PREFIX}/answers/#", f"{PREFIX}/agents/h-a/events")
    choices = [
        f"choice {c}: " + "a long continuation of many words " * 12
        for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    ]
    long_job = {"prompt": "Pick one.", "request_id": "long26", "choices": choices, "timeout_s": 2}
    started = time.monotonic()
    spy.publish(f"{PREFIX}/prompts", json.dumps(long_job))
    answer = spy.answer(f"{PREFIX}/answers/long26", 10)
    assert answer.status == "failed" and time.monotonic() - started < 5
    # The agent stops at the job's deadline (or at the controller's cancel, whichever comes
    # first): with one job at a time, the next prompt could not be answered within 5 s while
    # it was still scoring 26 long choices.
    spy.close()
    _still_serving(fleet)  # the agent's CPU is free again: the next prompt is answered at once


def test_budgets_with_no_controller_are_refused_and_leave_nothing_retained(
    mosquitto: LocalBroker,
) -> None:
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "moe2", "budgets", "--broker", mosquitto.url]
        + ["--fleet", "nobody-home", "--energy-j", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and "no active controller" in run.stderr, run.stderr
    spy = Raw(mosquitto, "moe2/nobody-home/controller/budgets")
    time.sleep(0.5)
    assert spy.got == []  # nothing retained for a future controller to apply
    spy.close()
