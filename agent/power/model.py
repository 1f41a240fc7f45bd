"""A declared power model (idle and busy watts from config): an estimate, never a measurement."""

from __future__ import annotations

import threading
import time

from agent.power.base import PowerReading, SensorSource


class DeclaredPowerModel:
    """Power is ``busy_w`` while the agent is busy, else ``idle_w``; energy integrates it."""

    source: SensorSource = "estimate"
    measured = False

    def __init__(self, idle_w: float, busy_w: float) -> None:
        if not (0 <= idle_w <= busy_w) or busy_w <= 0:
            raise ValueError(
                f"power model: need 0 <= idle_w <= busy_w, busy_w > 0 (got {idle_w}, {busy_w})"
            )
        self.idle_w = idle_w
        self.busy_w = busy_w
        self._busy = False
        self._energy_j = 0.0
        self._last_s = time.monotonic()
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        return self._busy

    @busy.setter
    def busy(self, value: bool) -> None:
        with self._lock:
            self._advance(time.monotonic())
            self._busy = value

    @property
    def power_w(self) -> float:
        return self.busy_w if self._busy else self.idle_w

    def _advance(self, now_s: float) -> None:
        # Power is a step function: the rectangle rule over each step is exact.
        self._energy_j += self.power_w * max(0.0, now_s - self._last_s)
        self._last_s = now_s

    def read(self) -> PowerReading:
        with self._lock:
            self._advance(time.monotonic())
            return PowerReading(power_w=self.power_w, energy_j=self._energy_j)

    def close(self) -> None:
        pass
