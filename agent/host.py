"""Facts about the device the agent runs on: hardware for capabilities, load for telemetry."""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    platform: str
    python: str
    cpu_count: int
    memory_total_bytes: int


def host_facts() -> HostFacts:
    return HostFacts(
        hostname=socket.gethostname(),
        platform=f"{platform.system()}-{platform.machine()}",
        python=platform.python_version(),
        cpu_count=os.cpu_count() or 1,
        memory_total_bytes=int(psutil.virtual_memory().total),
    )


@dataclass(frozen=True)
class HostLoad:
    cpu_utilisation: float | None
    memory_used_bytes: int
    process_rss_bytes: int
    temperature_c: float | None


class HostLoadReader:
    """CPU utilisation since the previous reading, memory, and the hottest temperature sensor."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        psutil.cpu_percent(interval=None)  # primes the counter: the next call covers the interval

    def read(self) -> HostLoad:
        return HostLoad(
            cpu_utilisation=min(1.0, psutil.cpu_percent(interval=None) / 100.0),
            memory_used_bytes=int(psutil.virtual_memory().used),
            process_rss_bytes=int(self._process.memory_info().rss),
            temperature_c=_hottest_c(),
        )


def _hottest_c() -> float | None:
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return None
    try:
        readings = [t.current for group in reader().values() for t in group if t.current]
    except (OSError, RuntimeError):
        return None
    return max(readings) if readings else None
