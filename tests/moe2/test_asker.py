"""The Asker's modes for a client that counts what comes back (the fault drills): one-shot,
re-sending from a thread, every answer heard, PUBACKs; against a stand-in controller on a real
Mosquitto that counts the prompts it gets and answers each one ``answers`` times."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from messages import topics
from messages.answers import Answer
from messages.bus import Bus, Inbound
from messages.prompts import Prompt
from moe2.client.ask import Asker
from moe2.client.pubacks import PubAcks
from moe2.local.broker import LocalBroker

FLEET = "asker"


class StandIn:
    """Counts the prompts it gets; answers each one ``answers`` times (0: never)."""

    def __init__(self, broker: LocalBroker, answers: int) -> None:
        self.answers = answers
        self.got: Counter[str] = Counter()
        self.bus = Bus(broker.endpoint, FLEET, client_id=f"stand-in-{uuid.uuid4().hex[:6]}")
        self.bus.subscribe(topics.PROMPTS, self._on_prompt)
        self.bus.connect()

    def _on_prompt(self, inbound: Inbound[Prompt]) -> None:
        request_id = inbound.message.request_id or ""
        self.got[request_id] += 1
        route = inbound.response_topic or inbound.message.reply_to
        for n in range(self.answers):
            answer = Answer(
                request_id=request_id, status="ok", answer=f"a{n}", experts=[], latency_s=0.0
            )
            self.bus.publish_to(route or "", answer, qos=1)


@pytest.fixture
def stand_in(request: pytest.FixtureRequest, mosquitto: LocalBroker) -> Iterator[StandIn]:
    made = StandIn(mosquitto, request.param)
    yield made
    made.bus.close()


@pytest.mark.parametrize("stand_in", [0], indirect=True)
def test_one_shot_publishes_once_and_a_resending_asker_again(
    stand_in: StandIn, mosquitto: LocalBroker
) -> None:
    with Asker(mosquitto.endpoint, FLEET, resend_s=None, keep_resending=True) as once:
        single = once.send(Prompt(prompt="q", timeout_s=5), wait_s=5)
        with Asker(mosquitto.endpoint, FLEET, resend_s=0.3, keep_resending=True) as again:
            repeated = again.send(Prompt(prompt="q", timeout_s=5), wait_s=0)
            time.sleep(1.5)
    assert stand_in.got[single] == 1
    assert stand_in.got[repeated] >= 3


@pytest.mark.parametrize("stand_in", [2], indirect=True)
def test_every_answer_is_heard_and_the_broker_acknowledged_the_prompt(
    stand_in: StandIn, mosquitto: LocalBroker
) -> None:
    heard: list[Answer] = []
    arrived = threading.Event()

    def hear(answer: Answer) -> None:
        heard.append(answer)
        if len(heard) == 2:
            arrived.set()

    with Asker(mosquitto.endpoint, FLEET, resend_s=None, on_every_answer=hear) as asker:
        request_id = asker.send(Prompt(prompt="q", timeout_s=5), wait_s=0)
        assert arrived.wait(5)
        assert asker.acknowledged(request_id)
        assert not asker.acknowledged("never-sent")
        assert asker.wait(request_id, 5).request_id == request_id
        assert not asker.acknowledged(request_id)  # forgotten once waited for
    assert [a.answer for a in heard] == ["a0", "a1"]


def test_pubacks_count_an_acknowledgement_heard_before_or_after_the_publish_returned() -> None:
    class Reason:
        def __init__(self, failure: bool) -> None:
            self.is_failure = failure

    acks = PubAcks()
    acks.on_puback(None, None, 1, Reason(False), None)  # paho heard it first
    acks.note(1, "early")
    acks.note(2, "late")
    acks.note(3, "refused")
    acks.note(4, None)  # a cancel: nobody asks about it
    acks.on_puback(None, None, 2, Reason(False), None)
    acks.on_puback(None, None, 3, Reason(True), None)
    acks.on_puback(None, None, 4, Reason(False), None)
    assert [acks.acknowledged(n) for n in ("early", "late", "refused")] == [True, True, False]
    acks.forget("late")
    assert not acks.acknowledged("late")
    # the cancel's acknowledgement left nothing behind for a later publish under its id
    acks.note(4, "reused")
    assert not acks.acknowledged("reused")
