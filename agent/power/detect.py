"""Find this device's power sensor: INA3221 (hwmon, then iio), NVML, RAPL, a declared model."""

from __future__ import annotations

from pathlib import Path

from agent.power.base import PowerSensor
from agent.power.ina3221 import Ina3221Sensor
from agent.power.model import DeclaredPowerModel
from agent.power.nvml import NvmlSensor
from agent.power.rapl import RaplSensor

SYSFS = Path("/sys")


def detect_sensor(
    sysfs_root: Path = SYSFS,
    power_model: tuple[float, float] | None = None,
    use_nvml: bool | None = None,
) -> PowerSensor | None:
    """The first sensor found, in the order INA3221 (hwmon, iio), NVML, RAPL, declared model.

    ``sysfs_root`` replaces ``/sys`` (for copied or fake trees). NVML lives outside sysfs, so it
    is tried only when ``use_nvml`` says so, by default only when reading the real ``/sys``.
    ``power_model`` is ``(idle_w, busy_w)``; without it and without a sensor: None.
    """
    sensor: PowerSensor | None = Ina3221Sensor.detect(sysfs_root, "hwmon")
    if sensor is None:
        sensor = Ina3221Sensor.detect(sysfs_root, "iio")
    if sensor is None and (sysfs_root == SYSFS if use_nvml is None else use_nvml):
        sensor = NvmlSensor.detect()
    if sensor is None:
        sensor = RaplSensor.detect(sysfs_root)
    if sensor is None and power_model is not None:
        sensor = DeclaredPowerModel(*power_model)
    return sensor
