"""A background sampler: reads a power sensor at a fixed rate and keeps the energy integral.

The integral uses the sensor's energy counter where it has one, else the trapezoid rule over
the sampled power. Samples live in a fixed-size ring (time, cumulative energy, busy flag), so a
long-running agent allocates nothing that grows. Per job: ``with sampler.job() as energy: ...``
gives the job's total energy, the idle baseline (idle power measured before the job times its
duration) and the dynamic part (total minus baseline).
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.power.base import PowerReading, PowerSensor, SensorSource
from agent.power.model import DeclaredPowerModel

if TYPE_CHECKING:
    from messages.results import EnergyReading

log = logging.getLogger(__name__)


@dataclass
class JobEnergy:
    """One job's energy, filled in when its ``with sampler.job()`` block exits."""

    source: SensorSource
    measured: bool
    start_s: float
    end_s: float | None = None
    total_j: float | None = None
    idle_power_w: float | None = None  # measured before the job; None when never idle yet
    baseline_j: float | None = None  # idle_power_w * duration_s
    dynamic_j: float | None = None  # total_j - baseline_j (may dip below 0 by noise)

    @property
    def duration_s(self) -> float | None:
        return None if self.end_s is None else self.end_s - self.start_s

    def energy_reading(self) -> EnergyReading | None:
        """The job's total energy as a result carries it, marked estimated unless measured."""
        from messages.results import EnergyReading

        if self.total_j is None:
            return None
        return EnergyReading(
            energy_j=max(0.0, self.total_j), source=self.source, estimated=not self.measured
        )


class PowerSampler:
    """Reads ``sensor`` at ``rate_hz`` in a daemon thread; keeps ``window_s`` of samples."""

    def __init__(
        self,
        sensor: PowerSensor,
        rate_hz: float = 10.0,
        window_s: float = 120.0,
        idle_window_s: float = 5.0,
    ) -> None:
        if not rate_hz > 0:
            raise ValueError(f"sampler rate must be > 0 Hz, got {rate_hz}")
        if not window_s > 0 or not idle_window_s > 0:
            raise ValueError("sampler window_s and idle_window_s must be > 0")
        self.sensor = sensor
        self.rate_hz = rate_hz
        self.idle_window_s = idle_window_s
        self.capacity = max(16, int(rate_hz * window_s) + 2)
        self._t_s = array("d", bytes(8 * self.capacity))
        self._e_j = array("d", bytes(8 * self.capacity))
        self._busy = array("b", bytes(self.capacity))  # 1: a job ran during the interval to here
        self._count = 0
        self._energy_j = 0.0
        self._last_counter_j: float | None = None
        self._last_power_w: float | None = None
        self._last_t_s: float | None = None
        self._last_reading = PowerReading(power_w=None, energy_j=None)
        self._last_idle_w: float | None = None
        self._active_jobs = 0
        self._busy_since_last = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> PowerSampler:
        if self._thread is not None:
            return self
        self._stop.clear()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="power-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> PowerSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        period_s = 1.0 / self.rate_hz
        next_s = time.monotonic()
        while True:
            next_s += period_s
            delay_s = next_s - time.monotonic()
            if delay_s < 0:  # fell behind: skip the missed ticks rather than burst
                next_s, delay_s = time.monotonic(), 0.0
            if self._stop.wait(delay_s):
                return
            try:
                self.sample()
            except Exception:  # a sensor must not kill the sampler; log it and go on
                log.exception("power sensor read failed")

    # -- sampling ---------------------------------------------------------------------------

    def sample(self) -> float:
        """Read the sensor now and record it; returns the sample's monotonic time."""
        with self._lock:
            return self._sample_locked()

    def _sample_locked(self) -> float:
        reading = self.sensor.read()
        now_s = time.monotonic()
        if reading.energy_j is not None and self._last_counter_j is not None:
            self._energy_j += max(0.0, reading.energy_j - self._last_counter_j)
        elif (
            reading.power_w is not None
            and self._last_power_w is not None
            and self._last_t_s is not None
        ):
            self._energy_j += (
                0.5 * (reading.power_w + self._last_power_w) * (now_s - self._last_t_s)
            )
        if reading.energy_j is not None:
            self._last_counter_j = reading.energy_j
        if reading.power_w is not None:
            self._last_power_w = reading.power_w
        self._last_t_s = now_s
        self._last_reading = reading
        i = self._count % self.capacity
        self._t_s[i] = now_s
        self._e_j[i] = self._energy_j
        self._busy[i] = 1 if self._busy_since_last else 0
        self._busy_since_last = self._active_jobs > 0
        self._count += 1
        return now_s

    def latest(self) -> PowerReading:
        """The last reading's power and rails, with the sampler's energy integral since start."""
        with self._lock:
            last = self._last_reading
            return PowerReading(power_w=last.power_w, energy_j=self._energy_j, rails=last.rails)

    # -- energy over time -------------------------------------------------------------------

    def _slot(self, j: int) -> int:
        """Ring slot of the j-th oldest kept sample."""
        return (max(0, self._count - self.capacity) + j) % self.capacity

    def _energy_at(self, t_s: float) -> float:
        n = min(self._count, self.capacity)
        if n == 0:
            raise ValueError("the power sampler has no samples yet")
        oldest_s, newest_s = self._t_s[self._slot(0)], self._t_s[self._slot(n - 1)]
        if not oldest_s <= t_s <= newest_s:
            raise ValueError(
                f"time {t_s:.3f} is outside the sampled window [{oldest_s:.3f}, {newest_s:.3f}]"
            )
        lo, hi = 0, n - 1  # binary search for the last sample at or before t_s
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._t_s[self._slot(mid)] <= t_s:
                lo = mid
            else:
                hi = mid - 1
        a = self._slot(lo)
        if lo == n - 1:
            return self._e_j[a]
        b = self._slot(lo + 1)
        span_s = self._t_s[b] - self._t_s[a]
        frac = (t_s - self._t_s[a]) / span_s if span_s > 0 else 1.0
        return self._e_j[a] + frac * (self._e_j[b] - self._e_j[a])

    def energy_between(self, t0_s: float, t1_s: float) -> float:
        """Energy in J between two ``time.monotonic()`` instants inside the kept window."""
        if t1_s < t0_s:
            raise ValueError(f"energy_between: t1 ({t1_s}) is before t0 ({t0_s})")
        with self._lock:
            if (
                self._count == 0
                or t1_s > self._t_s[self._slot(min(self._count, self.capacity) - 1)]
            ):
                self._sample_locked()
            return self._energy_at(t1_s) - self._energy_at(t0_s)

    def _idle_power_locked(self) -> float | None:
        """Mean power over the most recent idle intervals (up to ``idle_window_s`` of them)."""
        n = min(self._count, self.capacity)
        idle_j = idle_s = 0.0
        for j in range(n - 1, 0, -1):
            b, a = self._slot(j), self._slot(j - 1)
            if not self._busy[b]:
                idle_j += self._e_j[b] - self._e_j[a]
                idle_s += self._t_s[b] - self._t_s[a]
                if idle_s >= self.idle_window_s:
                    break
        if idle_s > 0:
            self._last_idle_w = idle_j / idle_s
        return self._last_idle_w

    def idle_power_w(self) -> float | None:
        with self._lock:
            return self._idle_power_locked()

    # -- per job ----------------------------------------------------------------------------

    @contextmanager
    def job(self) -> Iterator[JobEnergy]:
        """Meter a job: the yielded ``JobEnergy`` is filled in when the block exits."""
        with self._lock:
            start_s = self._sample_locked()
            start_j = self._energy_j
            idle_w = self._idle_power_locked()
            self._active_jobs += 1
            self._busy_since_last = True
            self._set_model_busy()
        result = JobEnergy(
            source=self.sensor.source, measured=self.sensor.measured, start_s=start_s
        )
        try:
            yield result
        finally:
            with self._lock:
                self._active_jobs -= 1
                self._set_model_busy()
                end_s = self._sample_locked()
                self._busy_since_last = self._active_jobs > 0
                result.end_s = end_s
                result.total_j = self._energy_j - start_j
                result.idle_power_w = idle_w
                if idle_w is not None:
                    result.baseline_j = idle_w * (end_s - start_s)
                    result.dynamic_j = result.total_j - result.baseline_j

    def _set_model_busy(self) -> None:
        if isinstance(self.sensor, DeclaredPowerModel):
            self.sensor.busy = self._active_jobs > 0
