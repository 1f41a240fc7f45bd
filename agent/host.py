"""Facts about the device the agent runs on: hardware for capabilities, load for telemetry."""

from __future__ import annotations

import logging
import os
import platform
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


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


def accelerator_name(sysfs_root: Path = Path("/sys")) -> str | None:
    """The device's GPUs as NVML names them (``NVIDIA GeForce RTX 4090``), else the Jetson
    board's device-tree model (``NVIDIA Jetson AGX Orin Developer Kit``), else None."""
    names = nvml_gpu_names()
    if names:
        return ", ".join(names)
    model = sysfs_root / "firmware/devicetree/base/model"
    try:
        text = model.read_bytes().rstrip(b"\0").decode("utf-8", errors="replace").strip()
    except OSError:
        return None
    return text if "jetson" in text.lower() or "nvidia" in text.lower() else None


def nvml_gpu_names() -> list[str]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError, or no driver library
        return []
    try:
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return names
    except pynvml.NVMLError as exc:
        log.debug("NVML: %s", exc)
        return []
    finally:
        pynvml.nvmlShutdown()


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
