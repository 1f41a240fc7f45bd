"""The local Mosquitto with persistence on really keeps sessions across a restart: its database
is written even when its folder lies under a private one (pytest's, a home folder), which the
mosquitto user that a root-started broker drops to cannot enter."""

from __future__ import annotations

import threading
from pathlib import Path

from messages import topics
from messages.answers import Answer
from messages.bus import BrokerEndpoint, Bus, Inbound
from moe2.local.broker import free_port, reachable, start_mosquitto

FLEET = "persist"


def _listener(endpoint: BrokerEndpoint, heard: list[str], arrived: threading.Event) -> Bus:
    def on_answer(inbound: Inbound[Answer]) -> None:
        heard.append(inbound.message.request_id)
        arrived.set()

    bus = Bus(endpoint, FLEET, client_id="moe2-listener", persistent=True)
    bus.subscribe(topics.ANSWERS, on_answer)
    return bus


def test_a_restarted_persistent_broker_keeps_a_session_and_what_was_queued_for_it(
    tmp_path: Path,
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    data, log = private / "broker-data", tmp_path / "mosquitto.log"
    port = free_port()
    heard: list[str] = []
    arrived = threading.Event()
    broker = start_mosquitto(port, log_file=log, persistence_dir=data)
    try:
        away = _listener(broker.endpoint, heard, arrived)
        away.connect()
        away.close()  # its session (the subscription) stays at the broker
        broker.stop()
        broker = start_mosquitto(port, log_file=log, persistence_dir=data)
        sender = Bus(broker.endpoint, FLEET, client_id="moe2-sender")
        sender.connect()
        answer = Answer(request_id="r1", status="ok", answer="x", experts=[], latency_s=0.0)
        sender.publish(topics.ANSWERS, answer, request_id="r1").wait_for_publish(5)
        sender.close()
        resumed: list[bool] = []
        back = _listener(broker.endpoint, heard, arrived)
        back.on_connected.append(resumed.append)
        back.connect()
        try:
            # queued for the session while its client was away, across the restart
            assert arrived.wait(10), log.read_text()[-2000:]
            assert heard == ["r1"] and resumed == [True]
        finally:
            back.close()
    finally:
        broker.stop()


def test_reachable_needs_the_search_bit_on_every_folder_above(tmp_path: Path) -> None:
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    owner = tmp_path.stat().st_uid
    assert reachable(inner, owner, set())
    (tmp_path / "a").chmod(0o600)  # its owner may read it, not enter it
    try:
        assert not reachable(inner, owner, set())
    finally:
        (tmp_path / "a").chmod(0o700)
    assert not reachable(inner, owner + 4242, set())  # a stranger: "a" is private
