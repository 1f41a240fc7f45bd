"""Jetson INA3221 power rails from sysfs: the hwmon layout (JetPack 5, 6) and the older iio one.

hwmon: ``bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in{N}_label``, ``in{N}_input`` (mV) and
``curr{N}_input`` (mA). iio: ``bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_{N}``,
``in_power{N}_input`` (mW), else ``in_voltage{N}_input`` (mV) times ``in_current{N}_input`` (mA).
Board power is the input rail (``VDD_IN``, ``POM_5V_IN``, ...) where there is one, else the sum of
the rails. The chip has no energy counter: energy is the trapezoid integral of board power over
the reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.power.base import PowerReading, SensorSource, TrapezoidIntegrator, read_number, read_text

Layout = Literal["hwmon", "iio"]

_INPUT_RAIL = re.compile(r"(^|_)IN$|^VIN(_|$)", re.IGNORECASE)
_HWMON_LABEL = re.compile(r"^in(\d+)_label$")
_IIO_NAME = re.compile(r"^rail_name_(\d+)$")


@dataclass(frozen=True)
class Rail:
    label: str
    power_path: Path | None  # mW (iio only)
    voltage_path: Path | None  # mV
    current_path: Path | None  # mA

    def power_w(self) -> float | None:
        if self.power_path is not None:
            power_mw = read_number(self.power_path)
            if power_mw is not None:
                return power_mw / 1e3
        if self.voltage_path is None or self.current_path is None:
            return None
        voltage_mv = read_number(self.voltage_path)
        current_ma = read_number(self.current_path)
        if voltage_mv is None or current_ma is None:
            return None
        return voltage_mv * current_ma / 1e6


def is_input_rail(label: str) -> bool:
    return bool(_INPUT_RAIL.search(label))


def _hwmon_rails(root: Path) -> list[Rail]:
    rails = []
    for hwmon in sorted(root.glob("bus/i2c/drivers/ina3221/*/hwmon/hwmon*")):
        for label_path in sorted(hwmon.glob("in*_label")):
            match = _HWMON_LABEL.match(label_path.name)
            label = read_text(label_path)
            if match is None or not label or label.upper() == "NC":
                continue
            n = match.group(1)
            rails.append(Rail(label, None, hwmon / f"in{n}_input", hwmon / f"curr{n}_input"))
    return rails


def _iio_rails(root: Path) -> list[Rail]:
    rails = []
    for device in sorted(root.glob("bus/i2c/drivers/ina3221x/*/iio:device*")):
        for name_path in sorted(device.glob("rail_name_*")):
            match = _IIO_NAME.match(name_path.name)
            label = read_text(name_path)
            if match is None or not label or label.upper() == "NC":
                continue
            n = match.group(1)
            rails.append(
                Rail(
                    label,
                    device / f"in_power{n}_input",
                    device / f"in_voltage{n}_input",
                    device / f"in_current{n}_input",
                )
            )
    return rails


class Ina3221Sensor:
    """Board power from the INA3221 rails; energy integrated over the reads."""

    source: SensorSource = "ina3221"
    measured = True

    def __init__(self, rails: list[Rail], layout: Layout) -> None:
        if not rails:
            raise ValueError("an INA3221 sensor needs at least one readable rail")
        self.layout = layout
        self.rails = rails
        self.input_rail = next((r for r in rails if is_input_rail(r.label)), None)
        self._energy = TrapezoidIntegrator()

    @classmethod
    def detect(cls, sysfs_root: Path, layout: Layout) -> Ina3221Sensor | None:
        """The sensor when at least one rail of this layout reads, else None."""
        found = _hwmon_rails(sysfs_root) if layout == "hwmon" else _iio_rails(sysfs_root)
        readable = [r for r in found if r.power_w() is not None]
        return cls(readable, layout) if readable else None

    def read(self) -> PowerReading:
        rails: dict[str, float] = {}
        for rail in self.rails:
            power_w = rail.power_w()
            if power_w is not None:
                rails[rail.label] = power_w
        if self.input_rail is not None:
            board_w = rails.get(self.input_rail.label)
        else:
            board_w = sum(rails.values()) if rails else None
        energy_j = self._energy.add(board_w)
        return PowerReading(power_w=board_w, energy_j=energy_j, rails=rails)

    def close(self) -> None:
        pass
