"""What the agent says its accelerator is: NVML's GPU names, else a Jetson's device-tree model."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.host import accelerator_name, nvml_gpu_names


def _no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    nv = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed (extra: nvidia)")

    def fail() -> None:
        raise nv.NVMLError(nv.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(nv, "nvmlInit", fail)


def test_nvml_names_every_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    nv = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed (extra: nvidia)")
    names = {0: "NVIDIA GeForce RTX 4090", 1: b"NVIDIA GeForce RTX 4090"}  # str or bytes
    monkeypatch.setattr(nv, "nvmlInit", lambda: None)
    monkeypatch.setattr(nv, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(nv, "nvmlDeviceGetCount", lambda: 2)
    monkeypatch.setattr(nv, "nvmlDeviceGetHandleByIndex", lambda i: i)
    monkeypatch.setattr(nv, "nvmlDeviceGetName", lambda h: names[h])
    assert nvml_gpu_names() == ["NVIDIA GeForce RTX 4090"] * 2
    assert accelerator_name(tmp_path) == "NVIDIA GeForce RTX 4090, NVIDIA GeForce RTX 4090"


def test_jetson_model_from_the_device_tree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_nvml(monkeypatch)  # NVML on a Jetson has no GPU to name
    model = tmp_path / "firmware/devicetree/base/model"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")  # NUL-terminated, as in /sys
    assert accelerator_name(tmp_path) == "NVIDIA Jetson AGX Orin Developer Kit"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")  # a board, not an accelerator
    assert accelerator_name(tmp_path) is None
    model.unlink()
    assert accelerator_name(tmp_path) is None
