"""The active controller's lease: evidence that its link to the broker works now.

A controller acts (dispatches, answers, plans, fails, finds agents silent) only while its lease
is fresh. The lease is renewed by its own retained status coming back from the broker (every
controller subscribes to ``controllers/+/status``): an echo proves the broker held this very
connection when the probe was sent, so the lease runs ``length_s`` from the *sending* of the
probe. A process that was frozen finds its lease expired when it thaws, whatever is still in its
socket; one whose link passes nothing sees no echo and lets the lease run out, well before the
broker gives up on it (1.5 keepalives) and a standby takes over. An echo counts only on the
connection its probe was sent on: a probe re-sent after a reconnect renews nothing.
Pure bookkeeping: the controller passes the clock and the connection number.
"""

from __future__ import annotations

import threading

# Probes a lease gets per length: one lost or slow echo does not let it run out.
PROBES_PER_LEASE = 4


class Lease:
    def __init__(self, length_s: float) -> None:
        self.length_s = length_s
        self._sent: dict[float, tuple[float, int]] = {}  # probe key -> (sent at, connection)
        self._last_probe = float("-inf")
        self._until = float("-inf")
        self._connection = -1
        self._lock = threading.Lock()

    def due(self, now: float) -> bool:
        """Whether a probe should go out now."""
        return now - self._last_probe >= self.length_s / PROBES_PER_LEASE

    def probe(self, key: float, now: float, connection: int) -> None:
        """A probe (a status whose ``time_s`` is ``key``) is about to be published."""
        with self._lock:
            self._sent = {k: v for k, v in self._sent.items() if now - v[0] < self.length_s}
            self._sent[key] = (now, connection)
            self._last_probe = now

    def echoed(self, key: float, connection: int) -> bool:
        """A probe came back on ``connection``; whether it renewed the lease."""
        with self._lock:
            sent = self._sent.pop(key, None)
            if sent is None or sent[1] != connection:
                return False
            until = sent[0] + self.length_s
            if connection == self._connection and until <= self._until:
                return False
            self._until, self._connection = until, connection
            return True

    def fresh(self, now: float, connection: int) -> bool:
        """Whether the link was confirmed on this connection within the last ``length_s``."""
        return connection == self._connection and now < self._until
