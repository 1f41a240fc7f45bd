"""Shared fixtures: a real Mosquitto on a free loopback port, and real fleets on it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from moe2.local.broker import LocalBroker, start_mosquitto

SMOLLM2 = {"id": "smollm2", "model": "smollm2-135m", "n_ctx": 512}
GEMMA3 = {"id": "gemma3", "model": "gemma3-270m", "n_ctx": 512, "stop": ["\n"]}


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not on PATH: run `bash scripts/test.sh`, which installs it")
    log = Path(tmp_path_factory.mktemp("mosquitto")) / "mosquitto.log"
    with start_mosquitto(log_file=log) as broker:
        yield broker


@pytest.fixture(scope="session")
def smollm2_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M exported once per test session by the project's own ``export_onnx``."""
    from agent.onnx.export import export_onnx

    out = Path(tmp_path_factory.mktemp("onnx")) / "smollm2-135m"
    export_onnx("smollm2-135m", out, say=lambda _: None)
    return out


@pytest.fixture(scope="session", autouse=True)
def _state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Controllers keep their ledgers under $XDG_STATE_HOME: a fresh one for the test session
    (children inherit it), never the user's own."""
    import os

    old = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state-home"))
    yield
    if old is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = old
