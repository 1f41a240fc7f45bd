"""Power sensors (INA3221, NVML, RAPL, a declared model) and per-job energy from a sampler."""

from agent.power.base import PowerReading, PowerSensor
from agent.power.detect import detect_sensor
from agent.power.sampler import JobEnergy, PowerSampler

__all__ = ["JobEnergy", "PowerReading", "PowerSampler", "PowerSensor", "detect_sensor"]
