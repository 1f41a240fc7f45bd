"""NVIDIA GPUs through NVML (``nvidia-ml-py``, the optional ``nvidia`` extra), all GPUs summed.

Energy is the total-energy counter (mJ, Volta and later) where the GPU has one, else the
trapezoid integral of ``nvmlDeviceGetPowerUsage`` (mW) over the reads. On Jetson NVML reports
"not supported" for both, which is why the INA3221 is tried first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from agent.power.base import PowerReading, SensorSource, TrapezoidIntegrator

log = logging.getLogger(__name__)


@dataclass
class _Gpu:
    name: str
    handle: Any
    start_mj: float | None  # None: no energy counter, power is integrated
    integrator: TrapezoidIntegrator = field(default_factory=TrapezoidIntegrator)


class NvmlSensor:
    source: SensorSource = "nvml"
    measured = True

    def __init__(self, pynvml: Any, gpus: list[_Gpu]) -> None:
        if not gpus:
            raise ValueError("an NVML sensor needs at least one GPU with power or energy")
        self._nvml = pynvml
        self._gpus = gpus

    @classmethod
    def detect(cls) -> NvmlSensor | None:
        """The sensor when NVML loads and some GPU reports power or energy, else None."""
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError, or the library missing
            log.debug("NVML unavailable: %s", exc)
            return None
        gpus = []
        try:
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                gpu = _Gpu(f"gpu{i}", handle, _energy_mj(pynvml, handle))
                if gpu.start_mj is not None or _power_w(pynvml, handle) is not None:
                    gpus.append(gpu)
        except pynvml.NVMLError as exc:
            log.debug("NVML: %s", exc)
        if not gpus:
            _shutdown(pynvml)
            return None
        return cls(pynvml, gpus)

    def read(self) -> PowerReading:
        now_s = time.monotonic()
        rails: dict[str, float] = {}
        energy_j = 0.0
        for gpu in self._gpus:
            power_w = _power_w(self._nvml, gpu.handle)
            if power_w is not None:
                rails[gpu.name] = power_w
            if gpu.start_mj is not None:
                counter_mj = _energy_mj(self._nvml, gpu.handle)
                if counter_mj is not None:
                    gpu.integrator.energy_j = (counter_mj - gpu.start_mj) / 1e3
            else:
                gpu.integrator.add(power_w, now_s)
            energy_j += gpu.integrator.energy_j
        board_w = sum(rails.values()) if rails else None
        return PowerReading(power_w=board_w, energy_j=energy_j, rails=rails)

    def close(self) -> None:
        _shutdown(self._nvml)


def _energy_mj(pynvml: Any, handle: Any) -> float | None:
    try:
        return float(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
    except pynvml.NVMLError:
        return None


def _power_w(pynvml: Any, handle: Any) -> float | None:
    try:
        return float(pynvml.nvmlDeviceGetPowerUsage(handle)) / 1e3
    except pynvml.NVMLError:
        return None


def _shutdown(pynvml: Any) -> None:
    try:
        pynvml.nvmlShutdown()
    except Exception as exc:  # already shut down, or never initialised
        log.debug("NVML shutdown: %s", exc)
