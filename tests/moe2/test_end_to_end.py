"""A real fleet of processes on a real Mosquitto, asked every way a user can."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from messages import topics
from messages.bus import BrokerEndpoint
from messages.status import AgentStatus
from moe2.local.broker import LocalBroker
from moe2.local.fleet import AgentSpec, LocalFleet
from tests.conftest import GEMMA3, SMOLLM2
from tests.helpers import Recorder


def _fleet(
    broker: LocalBroker,
    tmp: Path,
    name: str,
    version: str,
    specs: list[AgentSpec],
    keepalive_s: int = 5,
) -> LocalFleet:
    endpoint = BrokerEndpoint("127.0.0.1", broker.port, version)  # type: ignore[arg-type]
    fleet = LocalFleet(endpoint, name, tmp, keepalive_s=keepalive_s, telemetry_interval_s=0.5)
    fleet.start_controller()
    for spec in specs:
        fleet.start_agent(spec)
    try:
        fleet.wait_ready([s.agent_id for s in specs], timeout_s=120)
    except Exception:
        fleet.stop()
        raise
    return fleet


@pytest.fixture(scope="module")
def fleet5(
    mosquitto: LocalBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFleet]:
    specs = [AgentSpec("edge-a", [SMOLLM2]), AgentSpec("edge-b", [GEMMA3])]
    fleet = _fleet(mosquitto, tmp_path_factory.mktemp("fleet5"), "e2e5", "5", specs)
    yield fleet
    fleet.stop()


@pytest.fixture(scope="module")
def fleet311(
    mosquitto: LocalBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFleet]:
    specs = [AgentSpec("old-a", [SMOLLM2])]
    fleet = _fleet(mosquitto, tmp_path_factory.mktemp("fleet311"), "e2e311", "3.1.1", specs)
    yield fleet
    fleet.stop()


def moe2(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moe2", *args], capture_output=True, text=True, timeout=timeout
    )


def _raw_client(version: int) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"raw-{uuid.uuid4().hex[:8]}",
        protocol=version,
    )
    return client


def test_ask_json_over_mqtt5(fleet5: LocalFleet, mosquitto: LocalBroker) -> None:
    run = moe2(
        "ask",
        "--broker",
        mosquitto.url,
        "--fleet",
        "e2e5",
        "--json",
        "--choice",
        "Berlin",
        "--choice",
        "Paris",
        "--choice",
        "Madrid",
        "The capital of France is",
    )
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer["answer"] == "Paris" and answer["status"] == "ok"
    assert answer["request_id"] and answer["latency_s"] > 0
    experts = {(e["expert_id"], e["agent_id"]) for e in answer["experts"]}
    assert experts == {("smollm2", "edge-a"), ("gemma3", "edge-b")}
    for e in answer["experts"]:
        assert e["weight"] == pytest.approx(0.5) and e["latency_s"] > 0
        assert len(e["choice_probs"]) == 3 and max(e["choice_probs"]) == e["choice_probs"][1]


def test_ask_free_text_in_a_table(fleet5: LocalFleet, mosquitto: LocalBroker) -> None:
    run = moe2(
        "ask",
        "--broker",
        mosquitto.url,
        "--fleet",
        "e2e5",
        "--max-tokens",
        "12",
        "Question: What is the capital of Japan?\nAnswer:",
    )
    assert run.returncode == 0, run.stderr
    assert "smollm2@edge-a" in run.stdout and "gemma3@edge-b" in run.stdout
    assert "answer:" in run.stdout and "Tokyo" in run.stdout


def test_raw_mqtt5_publish_with_response_topic(fleet5: LocalFleet, mosquitto: LocalBroker) -> None:
    got: list[mqtt.MQTTMessage] = []
    arrived = threading.Event()
    client = _raw_client(mqtt.MQTTv5)
    client.on_message = lambda c, u, m: (got.append(m), arrived.set())
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    client.subscribe("inbox/raw5", qos=1)
    time.sleep(0.3)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "inbox/raw5"
    props.CorrelationData = b"corr-42"
    payload = json.dumps({"prompt": "The largest planet is", "choices": ["Jupiter", "Mars"]})
    client.publish("moe2/e2e5/prompts", payload, qos=1, properties=props)
    assert arrived.wait(60), "no answer on the response topic"
    client.loop_stop()
    client.disconnect()
    assert got[0].properties.CorrelationData == b"corr-42"
    answer = json.loads(got[0].payload)
    assert answer["status"] == "ok" and len(answer["experts"]) == 2
    assert answer["choice_probs"] and abs(sum(answer["choice_probs"]) - 1) < 1e-6


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients missing")
def test_plain_mosquitto_pub_and_sub_as_in_the_readme(
    fleet5: LocalFleet, mosquitto: LocalBroker
) -> None:
    port = str(mosquitto.port)
    sub = subprocess.Popen(
        ["mosquitto_sub", "-p", port, "-t", "moe2/e2e5/answers/#", "-C", "1", "-W", "90"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    subprocess.run(
        ["mosquitto_pub", "-p", port, "-t", "moe2/e2e5/prompts/text", "-m", "Name a fruit."],
        check=True,
    )
    out, _ = sub.communicate(timeout=100)
    answer = json.loads(out)
    assert answer["status"] == "ok" and answer["answer"]


def test_mqtt311_fleet_with_reply_to(fleet311: LocalFleet, mosquitto: LocalBroker) -> None:
    run = moe2(
        "ask",
        "--broker",
        mosquitto.url,
        "--mqtt-version",
        "3.1.1",
        "--fleet",
        "e2e311",
        "--json",
        "--choice",
        "Tokyo",
        "--choice",
        "Lima",
        "The capital of Japan is",
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["answer"] == "Tokyo"

    got: list[bytes] = []
    arrived = threading.Event()
    client = _raw_client(mqtt.MQTTv311)
    client.on_message = lambda c, u, m: (got.append(m.payload), arrived.set())
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    client.subscribe("inbox/raw311", qos=1)
    time.sleep(0.3)
    prompt = {
        "prompt": "Say hi.",
        "max_tokens": 8,
        "reply_to": "inbox/raw311",
        "request_id": "r311",
    }
    client.publish("moe2/e2e311/prompts", json.dumps(prompt), qos=1)
    assert arrived.wait(60), "no answer on reply_to"
    client.loop_stop()
    client.disconnect()
    answer = json.loads(got[0])
    assert answer["request_id"] == "r311" and answer["status"] == "ok"
    assert answer["experts"][0]["agent_id"] == "old-a" and answer["experts"][0]["text"]


def _fleet_rows(mosquitto: LocalBroker, fleet: str, announced: bool = True) -> dict[str, Any]:
    """``moe2 fleet --json`` by agent. ``announced=False``: the agents may not have announced
    themselves yet (a loaded machine starts them slowly), and none is no error."""
    run = moe2("fleet", "--broker", mosquitto.url, "--fleet", fleet, "--json", "--wait", "0.5")
    if not announced and run.returncode == 1 and "no agent under" in run.stderr:
        return {}
    assert run.returncode == 0, run.stderr
    return {row["agent_id"]: row for row in json.loads(run.stdout)}


def test_killed_agent_goes_offline_and_the_rest_answer(
    mosquitto: LocalBroker, tmp_path: Path
) -> None:
    keepalive_s = 4
    specs = [AgentSpec("k-a", [SMOLLM2]), AgentSpec("k-b", [SMOLLM2])]
    fleet = _fleet(mosquitto, tmp_path, "e2ekill", "5", specs, keepalive_s=keepalive_s)
    try:
        rows = _fleet_rows(mosquitto, "e2ekill")
        assert rows["k-b"]["state"] == "online" and rows["k-b"]["loaded_experts"] == ["smollm2"]
        assert rows["k-b"]["last_latency_s"] is None and rows["k-b"]["power_w"] is None
        with Recorder(mosquitto.endpoint, "e2ekill").watch(
            topics.AGENT_STATUS, agent_id="k-b"
        ) as rec:
            killed_at = time.monotonic()
            fleet.kill("k-b", signal.SIGKILL)
            rec.wait_for_a(AgentStatus, lambda s: s.state == "offline", 2 * keepalive_s)
            offline_after_s = time.monotonic() - killed_at
        assert offline_after_s <= 1.5 * keepalive_s
        rows = _fleet_rows(mosquitto, "e2ekill")
        assert rows["k-b"]["state"] == "offline" and rows["k-a"]["state"] == "online"
        run = moe2(
            "ask",
            "--broker",
            mosquitto.url,
            "--fleet",
            "e2ekill",
            "--json",
            "--choice",
            "Paris",
            "--choice",
            "Rome",
            "The capital of France is",
        )
        assert run.returncode == 0, run.stderr
        answer = json.loads(run.stdout)
        assert answer["status"] == "ok" and answer["answer"] == "Paris"
        assert [e["agent_id"] for e in answer["experts"]] == ["k-a"]
        rows = _fleet_rows(mosquitto, "e2ekill")
        assert rows["k-a"]["last_latency_s"] is not None
    finally:
        fleet.stop()


def test_graceful_stop_says_why(mosquitto: LocalBroker, tmp_path: Path) -> None:
    fleet = _fleet(mosquitto, tmp_path, "e2estop", "5", [AgentSpec("s-a", [SMOLLM2])])
    try:
        fleet.kill("s-a", signal.SIGTERM)
        assert fleet.processes["s-a"].returncode == 0
        rows = _fleet_rows(mosquitto, "e2estop")
        assert rows["s-a"]["state"] == "offline" and rows["s-a"]["reason"] == "shutdown"
    finally:
        fleet.stop()


def test_env_keeps_working_without_controller(mosquitto: LocalBroker) -> None:
    run = moe2("ask", "--broker", mosquitto.url, "--fleet", "nobody-home", "--timeout", "2", "hi")
    assert run.returncode == 1
    assert "no controller has ever served fleet 'nobody-home'" in run.stderr
    assert "Traceback" not in run.stderr
    assert os.environ.get("MOE2_FLEET") is None


def test_an_agent_whose_experts_all_fail_to_load_says_so(
    mosquitto: LocalBroker, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a GGUF model at all" * 100)
    endpoint = BrokerEndpoint("127.0.0.1", mosquitto.port, "5")
    fleet = LocalFleet(endpoint, "e2ejunk", tmp_path, keepalive_s=5, telemetry_interval_s=0.5)
    fleet.start_controller()
    fleet.start_agent(AgentSpec("junk-a", [{"id": "junk", "model": str(junk)}]))
    try:
        row: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not row.get("failed_experts"):
            row = _fleet_rows(mosquitto, "e2ejunk", announced=False).get("junk-a", {})
        assert row["state"] == "online" and "no usable expert" in (row["warning"] or "")
        assert list(row["failed_experts"]) == ["junk"]
        run = subprocess.run(
            [sys.executable, "-m", "moe2", "fleet", "--broker", mosquitto.url]
            + ["--fleet", "e2ejunk", "--wait", "0.5"],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, COLUMNS="200"),
        )
        assert "no usable expert" in run.stdout and "junk failed to load" in run.stderr
    finally:
        fleet.stop()
