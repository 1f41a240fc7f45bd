"""``moe2 agent probe``: which power sensor this device has, and one reading from it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from agent.power.detect import SYSFS, detect_sensor
from moe2.cli.options import fail

SETTLE_S = 0.2  # between the two reads, so power from an energy counter is defined


def probe_reading(sysfs_root: Path = SYSFS) -> dict[str, Any]:
    """Detect the sensor and read it twice ``SETTLE_S`` apart; ``source`` "none" when absent."""
    sensor = detect_sensor(sysfs_root)
    if sensor is None:
        return {"source": "none", "measured": False, "power_w": None, "energy_j": None, "rails": {}}
    try:
        sensor.read()
        time.sleep(SETTLE_S)
        reading = sensor.read()
    finally:
        sensor.close()
    return {
        "source": sensor.source,
        "measured": sensor.measured,
        "power_w": reading.power_w,
        "energy_j": reading.energy_j,
        "rails": reading.rails,
    }


def probe(
    sysfs_root: Annotated[
        Path | None,
        typer.Option("--sysfs-root", help="Read this directory in place of /sys (copied trees)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Detect this device's power sensor and print one reading (W, J since the probe started)."""
    if sysfs_root is not None and not sysfs_root.is_dir():
        fail(f"--sysfs-root {sysfs_root}: not a directory")
    result = probe_reading(sysfs_root if sysfs_root is not None else SYSFS)
    if as_json:
        print(json.dumps(result))
        return
    out = Console()
    if result["source"] == "none":
        out.print("power sensor: none (energy will be absent, or estimated from a power model)")
        return
    kind = "measured" if result["measured"] else "estimated"
    power = "n/a" if result["power_w"] is None else f"{result['power_w']:.3f} W"
    out.print(f"power sensor: {result['source']} ({kind}); board power {power}")
    for name, rail_w in result["rails"].items():
        out.print(f"  {name}: {rail_w:.3f} W")
