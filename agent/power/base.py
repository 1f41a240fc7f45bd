"""The interface every power sensor implements, and the trapezoid integrator several share."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

# The sources this package can detect; each is also a messages.base.EnergySource.
SensorSource = Literal["ina3221", "nvml", "rapl", "estimate"]


@dataclass(frozen=True)
class PowerReading:
    """One reading: board power now, the energy counter since the sensor started, named rails."""

    power_w: float | None
    energy_j: float | None
    rails: dict[str, float] = field(default_factory=dict)


class PowerSensor(Protocol):
    source: SensorSource
    measured: bool  # False for a declared power model (an estimate)

    def read(self) -> PowerReading:
        """Read now. Never raises for an unreadable file: the value is None (or skipped)."""
        ...

    def close(self) -> None: ...


class TrapezoidIntegrator:
    """Energy in J from power samples in W: the trapezoid rule over monotonic time."""

    def __init__(self) -> None:
        self.energy_j = 0.0
        self._last_t_s: float | None = None
        self._last_power_w: float | None = None

    def add(self, power_w: float | None, t_s: float | None = None) -> float:
        """Add a sample (None skips it: the next interval then uses the last known power)."""
        now_s = time.monotonic() if t_s is None else t_s
        if power_w is None:
            return self.energy_j
        if self._last_t_s is not None and self._last_power_w is not None:
            dt_s = max(0.0, now_s - self._last_t_s)
            self.energy_j += 0.5 * (self._last_power_w + power_w) * dt_s
        self._last_t_s, self._last_power_w = now_s, power_w
        return self.energy_j


def read_number(path: Path) -> float | None:
    """A sysfs number, or None when the file is missing, unreadable or not a number."""
    try:
        with open(path, encoding="ascii") as f:
            return float(f.read().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def read_text(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
