"""Small test helpers: a recording MQTT client on the real broker."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from messages.bus import BrokerEndpoint, Bus, Inbound
from messages.topics import Topic


class Recorder:
    """Subscribes to topics and keeps what arrives, for assertions."""

    def __init__(self, endpoint: BrokerEndpoint, fleet: str) -> None:
        self.bus = Bus(endpoint, fleet, client_id=f"rec-{uuid.uuid4().hex[:8]}")
        self.received: list[Inbound[Any]] = []
        self._cond = threading.Condition()

    def watch(self, topic: Topic[Any], **params: str) -> Recorder:
        self.bus.subscribe(topic, self._keep, **params)
        return self

    def _keep(self, inbound: Inbound[Any]) -> None:
        with self._cond:
            self.received.append(inbound)
            self._cond.notify_all()

    def __enter__(self) -> Recorder:
        self.bus.connect()
        time.sleep(0.2)  # let subscriptions settle before the test publishes
        return self

    def __exit__(self, *exc: object) -> None:
        self.bus.close()

    def wait_for(self, predicate: Callable[[Any], bool], timeout_s: float = 10.0) -> Any:
        """The first received message satisfying predicate, waiting for it if needed."""
        with self._cond:
            found: list[Any] = []

            def check() -> bool:
                found[:] = [i.message for i in self.received if predicate(i.message)]
                return bool(found)

            if not self._cond.wait_for(check, timeout_s):
                seen = [type(i.message).__name__ for i in self.received]
                raise AssertionError(f"nothing matched within {timeout_s} s; saw {seen}")
            return found[0]

    def messages(self, kind: type | None = None) -> list[Any]:
        with self._cond:
            return [i.message for i in self.received if kind is None or isinstance(i.message, kind)]
