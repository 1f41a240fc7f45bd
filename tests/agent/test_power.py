"""Power sensors on fake sysfs trees with the real layouts, NVML patched, and the sampler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.power.base import PowerReading, SensorSource
from agent.power.detect import detect_sensor
from agent.power.ina3221 import Ina3221Sensor
from agent.power.model import DeclaredPowerModel
from agent.power.rapl import RaplSensor
from agent.power.sampler import PowerSampler

REPO = Path(__file__).resolve().parents[2]
RAPL_MAX_UJ = 262_143_328_850


def write(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path)  # atomic, so a concurrent reader never sees a half-written number


def hwmon_dir(root: Path, device: str = "1-0040", hwmon: str = "hwmon3") -> Path:
    return root / "bus/i2c/drivers/ina3221" / device / "hwmon" / hwmon


def hwmon_rail(d: Path, n: int, label: str, mv: float | None, ma: float | None) -> None:
    write(d / f"in{n}_label", label)
    if mv is not None:
        write(d / f"in{n}_input", mv)
    if ma is not None:
        write(d / f"curr{n}_input", ma)


def orin_hwmon_tree(root: Path) -> Path:
    """Orin Nano (JetPack 6) style: VDD_IN 5 W, VDD_CPU_GPU_CV 2 W, VDD_SOC 1.5 W."""
    d = hwmon_dir(root)
    write(d / "name", "ina3221")
    hwmon_rail(d, 1, "VDD_IN", 5000, 1000)
    hwmon_rail(d, 2, "VDD_CPU_GPU_CV", 5000, 400)
    hwmon_rail(d, 3, "VDD_SOC", 5000, 300)
    hwmon_rail(d, 7, "sum of shunt voltages", 120, None)  # no curr7_input: not a rail
    return root


def iio_tree(root: Path) -> Path:
    """Nano / TX2 (JetPack 4) style iio layout: POM_5V_IN 4 W, GPU 1 W, CPU 1 W from V * I."""
    d = root / "bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    write(d / "rail_name_0", "POM_5V_IN")
    write(d / "in_power0_input", 4000)
    write(d / "in_voltage0_input", 5000)
    write(d / "in_current0_input", 800)
    write(d / "rail_name_1", "POM_5V_GPU")
    write(d / "in_power1_input", 1000)
    write(d / "rail_name_2", "POM_5V_CPU")
    write(d / "in_voltage2_input", 5000)  # no in_power2_input: V * I
    write(d / "in_current2_input", 200)
    return root


def rapl_tree(root: Path, energy_uj: int) -> Path:
    base = root / "class/powercap"
    write(base / "intel-rapl:0/name", "package-0")
    write(base / "intel-rapl:0/energy_uj", energy_uj)
    write(base / "intel-rapl:0/max_energy_range_uj", RAPL_MAX_UJ)
    write(base / "intel-rapl:0:0/name", "core")  # a sub-domain: never summed
    write(base / "intel-rapl:0:0/energy_uj", 10**9)
    write(base / "intel-rapl:0:0/max_energy_range_uj", RAPL_MAX_UJ)
    write(base / "intel-rapl:1/name", "psys")  # the platform domain: would count twice
    write(base / "intel-rapl:1/energy_uj", 10**9)
    write(base / "intel-rapl:1/max_energy_range_uj", RAPL_MAX_UJ)
    return root


# -- INA3221 --------------------------------------------------------------------------------


def test_hwmon_board_power_is_the_input_rail(tmp_path: Path) -> None:
    sensor = detect_sensor(orin_hwmon_tree(tmp_path), use_nvml=False)
    assert isinstance(sensor, Ina3221Sensor) and sensor.layout == "hwmon"
    assert sensor.source == "ina3221" and sensor.measured
    reading = sensor.read()
    assert reading.power_w == pytest.approx(5.0)
    assert reading.rails == pytest.approx({"VDD_IN": 5.0, "VDD_CPU_GPU_CV": 2.0, "VDD_SOC": 1.5})
    assert reading.energy_j == 0.0
    time.sleep(0.05)
    second = sensor.read()
    assert second.energy_j == pytest.approx(5.0 * 0.05, rel=0.5)


def test_hwmon_without_input_rail_sums_rails_and_spans_chips(tmp_path: Path) -> None:
    a = hwmon_dir(tmp_path, "1-0040", "hwmon2")  # AGX Xavier style: two chips, no input rail
    hwmon_rail(a, 1, "GPU", 5000, 200)
    hwmon_rail(a, 2, "CPU", 5000, 400)
    b = hwmon_dir(tmp_path, "1-0041", "hwmon3")
    hwmon_rail(b, 1, "SOC", 5000, 100)
    hwmon_rail(b, 2, "NC", 5000, 100)  # not connected
    reading = detect_sensor(tmp_path, use_nvml=False).read()  # type: ignore[union-attr]
    assert reading.power_w == pytest.approx(3.5)
    assert set(reading.rails) == {"GPU", "CPU", "SOC"}


def test_hwmon_skips_missing_and_unreadable_files(tmp_path: Path) -> None:
    d = hwmon_dir(tmp_path)
    hwmon_rail(d, 1, "VDD_IN", 5000, 1000)
    hwmon_rail(d, 2, "VDD_GPU_SOC", 5000, None)  # curr2_input missing
    hwmon_rail(d, 3, "VDD_CPU_CV", 5000, None)
    (d / "curr3_input").mkdir()  # unreadable: a directory where the file should be
    hwmon_rail(d, 4, "VDD_DDR", "garbage", 100)  # not a number
    sensor = detect_sensor(tmp_path, use_nvml=False)
    assert sensor is not None
    reading = sensor.read()
    assert reading.power_w == pytest.approx(5.0)
    assert reading.rails == pytest.approx({"VDD_IN": 5.0})
    # A rail that goes unreadable later: skipped, and board power is None while the input is.
    write(d / "curr1_input", "")
    later = sensor.read()
    assert later.power_w is None and later.rails == {}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_hwmon_chmod_unreadable_rail_is_skipped(tmp_path: Path) -> None:
    d = hwmon_dir(tmp_path)
    hwmon_rail(d, 1, "VDD_IN", 5000, 1000)
    hwmon_rail(d, 2, "VDD_CPU_GPU_CV", 5000, 400)
    (d / "curr2_input").chmod(0)
    reading = detect_sensor(tmp_path, use_nvml=False).read()  # type: ignore[union-attr]
    assert reading.rails == pytest.approx({"VDD_IN": 5.0})


def test_no_readable_rail_is_no_sensor(tmp_path: Path) -> None:
    d = hwmon_dir(tmp_path)
    hwmon_rail(d, 1, "VDD_IN", 5000, None)
    assert detect_sensor(tmp_path, use_nvml=False) is None


def test_iio_layout(tmp_path: Path) -> None:
    sensor = detect_sensor(iio_tree(tmp_path), use_nvml=False)
    assert isinstance(sensor, Ina3221Sensor) and sensor.layout == "iio"
    reading = sensor.read()
    assert reading.power_w == pytest.approx(4.0)
    assert reading.rails == pytest.approx({"POM_5V_IN": 4.0, "POM_5V_GPU": 1.0, "POM_5V_CPU": 1.0})


def test_hwmon_is_preferred_over_iio_and_rapl(tmp_path: Path) -> None:
    orin_hwmon_tree(tmp_path)
    iio_tree(tmp_path)
    rapl_tree(tmp_path, 0)
    sensor = detect_sensor(tmp_path, use_nvml=False)
    assert isinstance(sensor, Ina3221Sensor) and sensor.layout == "hwmon"


# -- RAPL, declared model, none -------------------------------------------------------------


def test_rapl_sums_packages_and_handles_wraparound(tmp_path: Path) -> None:
    rapl_tree(tmp_path, RAPL_MAX_UJ - 1_000_000)
    write(tmp_path / "class/powercap/intel-rapl:2/energy_uj", 2_000_000)  # a second package
    write(tmp_path / "class/powercap/intel-rapl:2/max_energy_range_uj", RAPL_MAX_UJ)
    sensor = detect_sensor(tmp_path, use_nvml=False)
    assert isinstance(sensor, RaplSensor) and sensor.source == "rapl" and sensor.measured
    first = sensor.read()
    assert first.power_w is None and first.energy_j == 0.0
    write(tmp_path / "class/powercap/intel-rapl:0/energy_uj", 500_000)  # wrapped past the max
    write(tmp_path / "class/powercap/intel-rapl:2/energy_uj", 2_250_000)
    time.sleep(0.05)
    second = sensor.read()
    assert second.energy_j == pytest.approx(1.5 + 0.25)
    assert second.power_w is not None and 1.75 / 0.5 < second.power_w < 1.75 / 0.05 * 1.01
    write(tmp_path / "class/powercap/intel-rapl:0/energy_uj", "")  # unreadable: kept for later
    assert sensor.read().energy_j == pytest.approx(1.75)


def test_declared_model_only_without_a_sensor(tmp_path: Path) -> None:
    assert detect_sensor(tmp_path, use_nvml=False) is None
    model = detect_sensor(tmp_path, power_model=(2.0, 10.0), use_nvml=False)
    assert isinstance(model, DeclaredPowerModel)
    assert model.source == "estimate" and not model.measured
    with pytest.raises(ValueError, match="idle_w <= busy_w"):
        DeclaredPowerModel(10.0, 2.0)


# -- NVML, patched at the library-call level -------------------------------------------------


@pytest.fixture
def pynvml(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    nv = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed (extra: nvidia)")
    state = SimpleNamespace(nv=nv, counter_mj=[1_000_000.0, None], power_mw=[200_000, 50_000])

    def not_supported() -> Exception:
        return nv.NVMLError(nv.NVML_ERROR_NOT_SUPPORTED)

    def energy(handle: int) -> int:
        if state.counter_mj[handle] is None:
            raise not_supported()
        return int(state.counter_mj[handle])

    def power(handle: int) -> int:
        if state.power_mw[handle] is None:
            raise not_supported()
        return state.power_mw[handle]

    monkeypatch.setattr(nv, "nvmlInit", lambda: None)
    monkeypatch.setattr(nv, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(nv, "nvmlDeviceGetCount", lambda: 2)
    monkeypatch.setattr(nv, "nvmlDeviceGetHandleByIndex", lambda i: i)
    monkeypatch.setattr(nv, "nvmlDeviceGetTotalEnergyConsumption", energy)
    monkeypatch.setattr(nv, "nvmlDeviceGetPowerUsage", power)
    return state


def test_nvml_counter_and_sampled_power(
    pynvml: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import agent.power.nvml as nvml_module

    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(nvml_module, "time", SimpleNamespace(monotonic=lambda: clock.now))
    sensor = detect_sensor(tmp_path, use_nvml=True)  # NVML comes before RAPL
    assert sensor is not None and sensor.source == "nvml" and sensor.measured
    first = sensor.read()
    assert first.power_w == pytest.approx(250.0)
    assert first.rails == pytest.approx({"gpu0": 200.0, "gpu1": 50.0})
    assert first.energy_j == pytest.approx(0.0)
    pynvml.counter_mj[0] += 30_000  # GPU 0: counter, +30 J
    clock.now += 2.0  # GPU 1: no counter, 50 W then 70 W over 2 s -> 120 J
    pynvml.power_mw[1] = 70_000
    assert sensor.read().energy_j == pytest.approx(30.0 + 120.0)
    sensor.close()


def test_nvml_not_supported_or_failing_is_not_detected(
    pynvml: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pynvml.counter_mj = [None, None]  # Jetson: NVML says "not supported" for both
    pynvml.power_mw = [None, None]
    assert detect_sensor(tmp_path, use_nvml=True) is None

    def fail() -> None:
        raise pynvml.nv.NVMLError(pynvml.nv.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml.nv, "nvmlInit", fail)
    assert detect_sensor(tmp_path, use_nvml=True) is None


# -- the sampler ----------------------------------------------------------------------------


class SyntheticSensor:
    """Power as a function of time since ``t0``; optionally with an exact energy counter."""

    measured = True

    def __init__(
        self, power_w: Callable[[float], float], energy_j: Callable[[float], float] | None
    ):
        self.source: SensorSource = "rapl"
        self.t0 = time.monotonic()
        self._power_w, self._energy_j = power_w, energy_j

    def read(self) -> PowerReading:
        t = time.monotonic() - self.t0
        energy = None if self._energy_j is None else self._energy_j(t)
        return PowerReading(power_w=self._power_w(t), energy_j=energy)

    def close(self) -> None:
        pass


STEP_S = 0.4


def step_power(t: float) -> float:
    return 5.0 if t < STEP_S else 15.0


def step_energy(t: float) -> float:
    return 5.0 * min(t, STEP_S) + 15.0 * max(0.0, t - STEP_S)


@pytest.mark.parametrize("counter", [False, True], ids=["trapezoid", "counter"])
def test_sampler_integrates_a_known_signal(counter: bool) -> None:
    sensor = SyntheticSensor(step_power, step_energy if counter else None)
    with PowerSampler(sensor, rate_hz=100) as sampler:
        t_begin = time.monotonic()
        time.sleep(2 * STEP_S)
        t_end = time.monotonic()
        measured_j = sampler.energy_between(t_begin, t_end)
    expected_j = step_energy(t_end - sensor.t0) - step_energy(t_begin - sensor.t0)
    assert measured_j == pytest.approx(expected_j, rel=0.02)
    assert sampler.latest().power_w == 15.0


def test_sampler_job_splits_idle_baseline_and_dynamic_energy() -> None:
    model = DeclaredPowerModel(idle_w=2.0, busy_w=10.0)
    with PowerSampler(model, rate_hz=50, idle_window_s=0.2) as sampler:
        time.sleep(0.3)
        with sampler.job() as energy:
            assert model.busy
            time.sleep(0.3)
        assert not model.busy
    assert energy.source == "estimate" and not energy.measured
    assert energy.duration_s is not None and energy.total_j is not None
    assert energy.total_j == pytest.approx(10.0 * energy.duration_s, rel=0.02)
    assert energy.idle_power_w == pytest.approx(2.0, rel=0.02)
    assert energy.baseline_j == pytest.approx(2.0 * energy.duration_s, rel=0.02)
    assert energy.dynamic_j == pytest.approx(8.0 * energy.duration_s, rel=0.02)
    reading = energy.energy_reading()
    assert reading is not None and reading.estimated and reading.source == "estimate"


class SwitchedSensor:
    """A measured sensor at 5 W, or 15 W while ``high``; its energy counter is exact."""

    source: SensorSource = "nvml"
    measured = True

    def __init__(self) -> None:
        self.energy_j, self.last_s, self._high = 0.0, time.monotonic(), False

    @property
    def power_w(self) -> float:
        return 15.0 if self._high else 5.0

    def set_high(self, high: bool) -> None:
        self.read()
        self._high = high

    def read(self) -> PowerReading:
        now_s = time.monotonic()
        self.energy_j += self.power_w * (now_s - self.last_s)
        self.last_s = now_s
        return PowerReading(power_w=self.power_w, energy_j=self.energy_j)

    def close(self) -> None:
        pass


def test_sampler_job_with_a_measured_signal() -> None:
    sensor = SwitchedSensor()
    with PowerSampler(sensor, rate_hz=100) as sampler:
        time.sleep(0.2)
        with sampler.job() as energy:
            sensor.set_high(True)
            time.sleep(0.2)
            sensor.set_high(False)
        time.sleep(0.05)
        with sampler.job() as second:  # back to back: the idle baseline still comes from idle
            time.sleep(0.05)
    assert energy.idle_power_w == pytest.approx(5.0, rel=0.02)
    assert energy.dynamic_j == pytest.approx(10.0 * energy.duration_s, rel=0.02)  # type: ignore[operator]
    assert energy.energy_reading().estimated is False  # type: ignore[union-attr]
    assert second.idle_power_w == pytest.approx(5.0, rel=0.02)
    assert second.dynamic_j == pytest.approx(0.0, abs=0.02)


def test_sampler_ring_is_bounded() -> None:
    sampler = PowerSampler(DeclaredPowerModel(1.0, 2.0), rate_hz=10, window_s=1.0)
    first = sampler.sample()
    for _ in range(5 * sampler.capacity):
        sampler.sample()
    assert len(sampler._t_s) == sampler.capacity
    with pytest.raises(ValueError, match="outside the sampled window"):
        sampler.energy_between(first, time.monotonic())
    with pytest.raises(ValueError, match="must be > 0"):
        PowerSampler(DeclaredPowerModel(1.0, 2.0), rate_hz=0)


# -- the probe command (acceptance 1) -------------------------------------------------------


def probe(root: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "moe2", "agent", "probe", "--sysfs-root", str(root), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_probe_hwmon(tmp_path: Path) -> None:
    out = probe(orin_hwmon_tree(tmp_path))
    assert out["source"] == "ina3221" and out["measured"] is True
    assert out["power_w"] == pytest.approx(5.0)
    assert out["energy_j"] == pytest.approx(5.0 * 0.2, rel=0.5)  # two reads ~0.2 s apart
    assert out["rails"]["VDD_CPU_GPU_CV"] == pytest.approx(2.0)  # type: ignore[index]


def test_probe_iio(tmp_path: Path) -> None:
    out = probe(iio_tree(tmp_path))
    assert out["source"] == "ina3221" and out["power_w"] == pytest.approx(4.0)
    assert out["energy_j"] == pytest.approx(4.0 * 0.2, rel=0.5)


@pytest.fixture
def rapl_at_10_w(tmp_path: Path) -> Iterator[Path]:
    """A RAPL tree whose counter runs at 10 W, wrapping, while the probe reads it."""
    rapl_tree(tmp_path, 0)
    counter = tmp_path / "class/powercap/intel-rapl:0/energy_uj"
    stop = threading.Event()
    start_uj, t0 = RAPL_MAX_UJ - 3_000_000, time.monotonic()

    def run() -> None:
        while not stop.wait(0.002):
            write(counter, int(start_uj + 10e6 * (time.monotonic() - t0)) % RAPL_MAX_UJ)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield tmp_path
    stop.set()
    thread.join()


def test_probe_rapl(rapl_at_10_w: Path) -> None:
    out = probe(rapl_at_10_w)
    assert out["source"] == "rapl" and out["measured"] is True
    assert out["power_w"] == pytest.approx(10.0, rel=0.15)
    assert out["energy_j"] == pytest.approx(10.0 * 0.2, rel=0.5)


def test_probe_empty_tree_says_none(tmp_path: Path) -> None:
    assert probe(tmp_path) == {
        "source": "none",
        "measured": False,
        "power_w": None,
        "energy_j": None,
        "rails": {},
    }
