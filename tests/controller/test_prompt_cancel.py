"""A prompt cancelled by its asker: the pure rules (who may cancel what, what the dispatcher
does), then the controller on a real Mosquitto with a scripted agent that never answers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from controller.decisions import CANCELLED, cancelled_reason, may_cancel
from controller.request_ids import scoped_id
from controller.service import Controller
from controller.settings import ControllerSettings
from messages import topics
from messages.answers import Answer
from messages.base import now_s
from messages.bus import Bus
from messages.cancel import Cancel
from messages.jobs import Job
from messages.prompt_cancel import PromptCancel
from messages.prompts import Prompt
from moe2.local.broker import LocalBroker
from tests.controller.test_dispatch import entry, make
from tests.helpers import Recorder, ScriptedAgent


def test_a_login_cancels_only_prompts_answered_under_its_own_replies() -> None:
    own = ["moe2/lab/replies/c1/q1"]
    assert may_cancel(own, "c1", "lab")
    assert not may_cancel(own, "c2", "lab")
    assert not may_cancel(["moe2/lab/replies/c1/q1", "moe2/lab/answers/q1"], "c1", "lab")
    assert not may_cancel(["moe2/lab/replies/c10/q1"], "c1", "lab")  # not a prefix of c10's
    assert not may_cancel([], "c1", "lab")  # a prompt nobody is told about is no login's
    assert may_cancel(["anything"], None, "lab")  # the shared topic: the open broker's rule


def test_the_cancelled_answer_says_so_with_the_askers_reason() -> None:
    assert cancelled_reason("") == CANCELLED == cancelled_reason(CANCELLED)
    assert cancelled_reason("the client left") == f"{CANCELLED}: the client left"


def test_withdrawing_cancels_the_jobs_out_and_frees_their_room() -> None:
    d = make(capacity=1)
    for rid in ("r1", "r2", "r3"):
        d.admit(entry(rid), 0.0, 1000.0)  # r1 on a1, r2 on a2, r3 waits for room
    actions = d.withdraw(entry("r1"), "cancelled by the asker", 0.5)
    ((answer, routes),) = actions.answers
    assert answer.request_id == "r1" and answer.status == "failed"
    assert answer.error == "cancelled by the asker" and routes[0].topic == "inbox/x"
    assert [(a, c.request_id, c.expert_id) for a, c in actions.cancels] == [("a1", "r1", "smol")]
    assert [(a, j.request_id) for a, j in actions.jobs] == [("a1", "r3")]  # r3 takes the slot
    queued = d.withdraw(entry("r4"), "gone", 0.6)  # never held: answered, nothing cancelled
    assert queued.cancels == [] and [a.status for a, _ in queued.answers] == ["failed"]
    assert d.counts() == (0, 2)


def test_a_queued_prompt_is_taken_out_of_the_queue() -> None:
    d = make(capacity=1)
    for rid in ("r1", "r2", "r3"):
        d.admit(entry(rid), 0.0, 1000.0)
    actions = d.withdraw(entry("r3"), "gone", 0.5)
    assert actions.cancels == [] and d.counts() == (0, 2)


# -- on a real broker ------------------------------------------------------------------------


@pytest.fixture
def fleet(mosquitto: LocalBroker) -> Iterator[tuple[str, Controller, ScriptedAgent]]:
    name = f"cancel-{uuid.uuid4().hex[:6]}"
    settings = ControllerSettings.load(None, broker=mosquitto.url, fleet=name)
    controller = Controller(settings)
    controller.start()
    agent = ScriptedAgent(mosquitto.endpoint, name, "a1", "e1", lambda job: None)  # never answers
    agent.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not controller.planner.assignments:
        time.sleep(0.05)
    yield name, controller, agent
    agent.bus.close()
    controller.stop()


def _publish(bus: Bus, topic: str, message: Prompt | PromptCancel) -> None:
    bus.publish_to(topic, message, qos=1).wait_for_publish(5)


def test_a_login_cancels_its_own_prompt_and_no_other(
    mosquitto: LocalBroker, fleet: tuple[str, Controller, ScriptedAgent]
) -> None:
    name, controller, agent = fleet
    rid = f"q-{uuid.uuid4().hex[:6]}"
    key = scoped_id("c1", rid)  # the controller keys a login's prompt by its login
    prompt = Prompt(prompt="Tell me a long story.", request_id=rid, max_tokens=400)
    bus = Bus(mosquitto.endpoint, name, client_id=f"c-{uuid.uuid4().hex[:6]}")
    rec = Recorder(mosquitto.endpoint, name).watch(topics.AGENT_CANCEL, agent_id="a1")
    rec.watch(topics.REPLIES, client_id="c1").watch(topics.ANSWERS, request_id=rid)
    with rec:
        bus.connect()
        _publish(bus, topics.CLIENT_PROMPTS.name(name, client_id="c1"), prompt)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(j.request_id == key for j in agent.jobs):
            time.sleep(0.05)
        assert [j.request_id for j in agent.jobs] == [key]

        def cancel(login: str | None) -> None:
            topic = (
                topics.PROMPTS_CANCEL.name(name)
                if login is None
                else topics.CLIENT_PROMPTS_CANCEL.name(name, client_id=login)
            )
            _publish(bus, topic, PromptCancel(request_id=rid, reason="gone", time_s=now_s()))

        cancel("c2")  # another login's cancel names c2's own id space: nothing of c1's stops
        unknown = PromptCancel(request_id="nobody-asked", time_s=now_s())
        _publish(bus, topics.CLIENT_PROMPTS_CANCEL.name(name, client_id="c1"), unknown)
        time.sleep(1.0)
        assert key in controller.ledger.entries and rec.messages(Cancel) == []

        cancel("c1")
        answer = rec.wait_for_answer(timeout_s=10)
        assert answer.status == "failed" and answer.error == f"{CANCELLED}: gone"
        stopped = rec.wait_for_a(Cancel, timeout_s=10)
        assert answer.request_id == rid  # the asker reads the id it sent
        assert stopped.request_id == key and stopped.expert_id == "e1"
        assert key not in controller.ledger.entries  # forgotten: no takeover runs it again

        cancel("c1")  # twice: harmless
        _publish(bus, topics.CLIENT_PROMPTS.name(name, client_id="c1"), prompt)  # redelivered
        time.sleep(1.0)
        bus.close()
    answers = rec.messages(Answer)
    assert len(rec.messages(Cancel)) == 1
    assert [a.error for a in answers if a.status == "failed"] == [f"{CANCELLED}: gone"] * len(
        answers
    )
    assert [j.request_id for j in agent.jobs] == [key]  # the repeat was not run again
    assert isinstance(agent.jobs[0], Job)


def test_moe2_ask_interrupted_cancels_its_prompt(
    mosquitto: LocalBroker, fleet: tuple[str, Controller, ScriptedAgent]
) -> None:
    name, controller, agent = fleet
    rec = Recorder(mosquitto.endpoint, name).watch(topics.AGENT_CANCEL, agent_id="a1")
    rec.watch(topics.ANSWERS)
    with rec:
        ask = subprocess.Popen(
            [sys.executable, "-m", "moe2", "ask", "--broker", mosquitto.url, "--fleet", name,
             "--timeout", "120", "Tell me a long story."],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not agent.jobs and ask.poll() is None:
                time.sleep(0.1)
            assert agent.jobs, ask.stderr.read() if ask.poll() is not None else "no job"
            ask.send_signal(signal.SIGINT)  # Ctrl-C
            ask.wait(timeout=30)
        finally:
            ask.kill()
        rid = agent.jobs[0].request_id
        stopped = rec.wait_for_a(Cancel, timeout_s=10)
        answer = rec.wait_for_answer(timeout_s=10)
    assert stopped.request_id == rid == answer.request_id
    assert answer.status == "failed" and answer.error == f"{CANCELLED}: the asker was interrupted"
    assert rid not in controller.ledger.entries
