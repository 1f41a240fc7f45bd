"""Which of a client's QoS 1 publishes the broker acknowledged (PUBACK), by a name the client
gives each publish (the asker: the prompt's request id).

Only the broker's acknowledgement says a message reached it: paho queues a publish made while
disconnected and sends it once it reconnects, so a publish call succeeding says nothing."""

from __future__ import annotations

import threading
from typing import Any


class PubAcks:
    """Counts a name as acknowledged once the broker acknowledged any one of its publishes.

    Hand :meth:`on_puback` to paho as ``client.on_publish`` and :meth:`note` every publish's
    message id as soon as the publish returns it. paho may hear the PUBACK before that (it
    calls back on its network thread), so an acknowledgement of a message id not yet noted is
    kept until it is. Never call :meth:`note` holding a lock that :meth:`on_puback`'s caller
    may wait for: paho calls back holding its outgoing-message lock, which publish takes too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, str | None] = {}  # message id -> name, until acknowledged
        self._early: set[int] = set()  # acknowledged before noted
        self._acknowledged: set[str] = set()

    def note(self, mid: int, name: str | None) -> None:
        """The message id of one publish, and its name (None: a publish nobody asks about)."""
        with self._lock:
            if mid in self._early:
                self._early.discard(mid)
                if name is not None:
                    self._acknowledged.add(name)
            else:
                self._pending[mid] = name

    def on_puback(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        """paho's ``on_publish`` (callback API version 2)."""
        if getattr(reason, "is_failure", False):
            return  # refused (an MQTT 5 reason code): not taken
        with self._lock:
            if mid not in self._pending:
                self._early.add(mid)
                return
            name = self._pending.pop(mid)
            if name is not None:
                self._acknowledged.add(name)

    def acknowledged(self, name: str) -> bool:
        with self._lock:
            return name in self._acknowledged

    def forget(self, name: str) -> None:
        """Keep no more of ``name`` (its publishes still unacknowledged are dropped when
        their acknowledgement comes)."""
        with self._lock:
            self._acknowledged.discard(name)
            for mid in [m for m, n in self._pending.items() if n == name]:
                self._pending[mid] = None
