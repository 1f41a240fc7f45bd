"""`moe2 demo`, the README's main job, with Mosquitto and with the embedded broker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _path_without_mosquitto() -> str:
    keep = [
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not (Path(d) / "mosquitto").exists()
    ]
    return os.pathsep.join(keep)


def _demo(path: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=path, COLUMNS="120")
    return subprocess.run(
        [sys.executable, "-m", "moe2", "demo"], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto on PATH")
def test_demo_on_mosquitto() -> None:
    run = _demo(os.environ["PATH"])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "broker: mosquitto" in run.stdout and "(MQTT 5)" in run.stdout
    assert run.stdout.count("answer:") == 3
    assert "answer: Paris" in run.stdout
    assert "smollm2@edge-a" in run.stdout and "gemma3@edge-b" in run.stdout


def test_demo_without_mosquitto_uses_the_embedded_broker() -> None:
    path = _path_without_mosquitto()
    assert shutil.which("mosquitto", path=path) is None
    run = _demo(path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "broker: embedded" in run.stdout and "(MQTT 3.1.1)" in run.stdout
    assert run.stdout.count("answer:") == 3
    assert "answer: Paris" in run.stdout
