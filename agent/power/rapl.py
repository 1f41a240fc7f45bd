"""Intel/AMD RAPL package energy counters under ``{root}/class/powercap/intel-rapl:N``.

Each package domain has ``energy_uj``, a counter that wraps at ``max_energy_range_uj``. The
sensor sums the packages (not their sub-domains, nor a ``psys`` domain, which would count twice).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from agent.power.base import PowerReading, SensorSource, read_number, read_text

_PACKAGE_DIR = re.compile(r"^intel-rapl:\d+$")


@dataclass
class _Package:
    name: str
    energy_path: Path
    max_range_uj: float
    last_uj: float


def _packages(sysfs_root: Path) -> list[_Package]:
    packages = []
    for domain in sorted((sysfs_root / "class" / "powercap").glob("intel-rapl:*")):
        if not _PACKAGE_DIR.match(domain.name):
            continue
        name = read_text(domain / "name") or domain.name
        if not name.startswith("package") and name != domain.name:
            continue
        energy_uj = read_number(domain / "energy_uj")
        max_range_uj = read_number(domain / "max_energy_range_uj")
        if energy_uj is None or max_range_uj is None or max_range_uj <= 0:
            continue
        packages.append(_Package(name, domain / "energy_uj", max_range_uj, energy_uj))
    return packages


class RaplSensor:
    """CPU package energy from the RAPL counters; power from the counter between reads."""

    source: SensorSource = "rapl"
    measured = True

    def __init__(self, packages: list[_Package]) -> None:
        if not packages:
            raise ValueError("a RAPL sensor needs at least one readable package domain")
        self._packages = packages
        self._energy_j = 0.0
        self._last_read: tuple[float, float] | None = None  # (monotonic s, energy_j)

    @classmethod
    def detect(cls, sysfs_root: Path) -> RaplSensor | None:
        packages = _packages(sysfs_root)
        return cls(packages) if packages else None

    def read(self) -> PowerReading:
        now_s = time.monotonic()
        dt_s = now_s - self._last_read[0] if self._last_read is not None else 0.0
        rails: dict[str, float] = {}
        for package in self._packages:
            energy_uj = read_number(package.energy_path)
            if energy_uj is None:
                continue  # keep the last value: the next good read carries the whole delta
            delta_uj = energy_uj - package.last_uj
            if delta_uj < 0:  # the counter wrapped
                delta_uj += package.max_range_uj
            package.last_uj = energy_uj
            self._energy_j += delta_uj / 1e6
            if dt_s > 0:
                rails[package.name] = delta_uj / 1e6 / dt_s
        power_w = None
        if self._last_read is not None and dt_s > 0:
            power_w = (self._energy_j - self._last_read[1]) / dt_s
        self._last_read = (now_s, self._energy_j)
        return PowerReading(power_w=power_w, energy_j=self._energy_j, rails=rails)

    def close(self) -> None:
        pass
