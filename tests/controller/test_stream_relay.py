"""The controller relays the leading expert's stream, on a real Mosquitto with scripted agents."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from controller.service import Controller
from controller.settings import ControllerSettings
from messages import topics
from messages.base import now_s
from messages.jobs import Job
from messages.prompts import Prompt
from messages.stream import StreamChunk
from moe2.local.broker import LocalBroker
from tests.controller.test_controller_service import ScriptedAgent, _ask, _result
from tests.helpers import Recorder


def streaming(agent: ScriptedAgent, pieces: list[tuple[float, str]], answer_at: float) -> None:
    """The agent streams each piece at its time (s after the job), then answers with them."""

    def behaviour(job: Job) -> None:
        def run() -> None:
            start = time.monotonic()
            for seq, (at, text) in enumerate(pieces):
                time.sleep(max(0.0, at - (time.monotonic() - start)))
                chunk = StreamChunk(
                    request_id=job.request_id,
                    expert_id=job.expert_id,
                    agent_id=agent.agent_id,
                    seq=seq,
                    text=text,
                    done=seq == len(pieces) - 1,
                    time_s=now_s(),
                )
                agent.bus.publish(topics.AGENT_STREAM, chunk, agent_id=agent.agent_id)
            time.sleep(max(0.0, answer_at - (time.monotonic() - start)))
            result = _result(job, ok=True, text="".join(t for _, t in pieces), completion_tokens=2)
            agent.bus.publish(topics.AGENT_RESULTS, result, agent_id=agent.agent_id)

        threading.Thread(target=run, daemon=True).start()

    agent.behaviour = behaviour  # type: ignore[assignment]


@pytest.fixture
def relay_fleet(
    mosquitto: LocalBroker,
) -> Iterator[tuple[str, Controller, dict[str, ScriptedAgent]]]:
    fleet = f"relay-{uuid.uuid4().hex[:6]}"
    settings = ControllerSettings.load(None, broker=mosquitto.url, fleet=fleet)
    controller = Controller(settings)
    controller.start()
    agents = {a: ScriptedAgent(mosquitto, fleet, a, e) for a, e in (("a1", "e1"), ("a2", "e2"))}
    for agent in agents.values():
        agent.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (
        controller.active and len(controller.planner.assignments) == 2
    ):
        time.sleep(0.05)
    yield fleet, controller, agents
    for agent in agents.values():
        agent.bus.close()
    controller.stop()


def test_among_equals_the_first_to_stream_leads_and_only_it_is_relayed(
    mosquitto: LocalBroker, relay_fleet: tuple[str, Controller, dict[str, ScriptedAgent]]
) -> None:
    fleet, controller, agents = relay_fleet
    streaming(agents["a2"], [(0.0, "Par"), (0.4, "is")], answer_at=0.6)
    streaming(agents["a1"], [(0.2, "Rome"), (0.3, "!")], answer_at=1.5)
    rid = f"r-{uuid.uuid4().hex[:6]}"
    reply = topics.REPLIES.name(fleet, client_id="c1", request_id=rid)
    with (
        Recorder(mosquitto.endpoint, fleet)
        .watch(topics.ANSWER_STREAM, request_id=rid)
        .watch(topics.REPLIES_STREAM, client_id="c1", request_id=rid)
        .watch(topics.ANSWERS, request_id=rid) as rec
    ):
        _ask(
            mosquitto, fleet, Prompt(prompt="Capital?", request_id=rid, stream=True, reply_to=reply)
        )
        answer = rec.wait_for_answer(timeout_s=10)
        time.sleep(0.3)
        public = [i.message for i in rec.received if i.topic.endswith(f"answers/{rid}/stream")]
        routed = [i.message for i in rec.received if i.topic.endswith(f"replies/c1/{rid}/stream")]
    assert [(c.agent_id, c.text) for c in public] == [("a2", "Par"), ("a2", "is"), ("a2", "")]
    assert [c.text for c in routed] == ["Par", "is", ""]  # the reply route's topic + /stream
    assert answer.answer == "Paris"  # the leader's text, the first to answer
    for final in (public[-1], routed[-1]):  # the controller's last word: done, and by whom
        assert final.final and final.done and final.seq == 2
        assert final.answered_by == ["e2@a2"] and final.answer_status == answer.status
    assert not any(c.final for c in public[:-1])
    assert controller._stream_leads == {}  # forgotten with the answer


def test_a_stream_whose_answer_comes_from_another_expert_ends_saying_so(
    mosquitto: LocalBroker, relay_fleet: tuple[str, Controller, dict[str, ScriptedAgent]]
) -> None:
    """The first to stream leads (a2), but a1 answers first and its text is the answer: the
    final chunk, after a2's tokens, names a1 as the expert the answer came from."""
    fleet, _, agents = relay_fleet
    streaming(agents["a2"], [(0.0, "Par"), (0.2, "is")], answer_at=6.0)
    streaming(agents["a1"], [(2.0, "Rome")], answer_at=2.2)
    rid = f"r-{uuid.uuid4().hex[:6]}"
    with (
        Recorder(mosquitto.endpoint, fleet)
        .watch(topics.ANSWER_STREAM, request_id=rid)
        .watch(topics.ANSWERS, request_id=rid) as rec
    ):
        _ask(mosquitto, fleet, Prompt(prompt="Capital?", request_id=rid, stream=True))
        answer = rec.wait_for_answer(timeout_s=30)
        final = rec.wait_for_a(StreamChunk, lambda c: c.final, timeout_s=30)
    assert answer.answer == "Rome"
    relayed = [c for c in rec.messages(StreamChunk) if not c.final]
    assert {(c.agent_id, c.expert_id) for c in relayed} == {("a2", "e2")}  # the preview
    assert (final.agent_id, final.expert_id, final.answered_by) == ("a2", "e2", ["e1@a1"])
    assert final.done and final.text == "" and final.seq == max(c.seq for c in relayed) + 1


def test_a_prompt_that_did_not_ask_to_stream_is_not_relayed(
    mosquitto: LocalBroker, relay_fleet: tuple[str, Controller, dict[str, ScriptedAgent]]
) -> None:
    fleet, _, agents = relay_fleet
    for agent in agents.values():
        streaming(agent, [(0.0, "hi")], answer_at=0.1)
    rid = f"r-{uuid.uuid4().hex[:6]}"
    with (
        Recorder(mosquitto.endpoint, fleet)
        .watch(topics.ANSWER_STREAM, request_id=rid)
        .watch(topics.ANSWERS, request_id=rid) as rec
    ):
        _ask(mosquitto, fleet, Prompt(prompt="Hello?", request_id=rid))
        rec.wait_for_answer(timeout_s=10)
        time.sleep(0.3)
    assert rec.messages(StreamChunk) == []
