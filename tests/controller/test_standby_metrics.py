"""What the README says of a standby's metrics: a second controller started with ``--metrics``
while another one leads shows ``moe2_controller_active 0`` and counts no prompt, while the
active one counts the answer. Real broker, two controllers, a scripted agent."""

from __future__ import annotations

import urllib.request
import uuid

from controller.service import Controller
from controller.settings import ControllerSettings
from messages import topics
from messages.answers import Answer
from messages.bus import Bus
from messages.prompts import Prompt
from moe2.local.broker import LocalBroker, free_port
from moe2.local.fleet import wait_until
from tests.controller.test_controller_service import ScriptedAgent
from tests.helpers import Recorder


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def _controller(mosquitto: LocalBroker, fleet: str, name: str, port: int) -> Controller:
    settings = ControllerSettings.load(
        None, broker=mosquitto.url, fleet=fleet, controller_id=name, status_interval_s=0.5
    )
    controller = Controller(settings)
    controller.metrics_listen = ("127.0.0.1", port)
    return controller


def test_a_standbys_metrics_say_so_and_count_no_prompt(mosquitto: LocalBroker) -> None:
    fleet = f"standby-metrics-{uuid.uuid4().hex[:6]}"
    ports = free_port(), free_port()
    first = _controller(mosquitto, fleet, "first", ports[0])
    second = _controller(mosquitto, fleet, "backup", ports[1])
    agent = ScriptedAgent(mosquitto, fleet, "a1", "e1")
    first.start()
    try:
        assert wait_until(lambda: first.active, 60)
        second.start()
        agent.start()
        assert wait_until(lambda: first.planner.assignments.get("a1") == ["e1"], 60)
        assert wait_until(lambda: "moe2_agents_online 1.0" in _scrape(ports[1]), 60)
        with Recorder(mosquitto.endpoint, fleet).watch(topics.ANSWERS) as answers:
            bus = Bus(mosquitto.endpoint, fleet, client_id=f"ask-{uuid.uuid4().hex[:6]}")
            bus.connect()
            bus.publish(topics.PROMPTS, Prompt(prompt="hi", request_id=f"{fleet}-q"))
            answer = answers.wait_for(lambda m: isinstance(m, Answer), timeout_s=60)
            bus.close()
        assert answer.status == "ok", answer
        assert 'moe2_prompts_total{status="ok"} 1.0' in _scrape(ports[0])
        standby = _scrape(ports[1])
        assert not second.active
        assert "moe2_controller_active 0.0" in standby and "moe2_prompts_total{" not in standby
        assert "moe2_controller_active 1.0" in _scrape(ports[0])
    finally:
        agent.stop()
        agent.bus.close()
        second.stop()
        first.stop()
