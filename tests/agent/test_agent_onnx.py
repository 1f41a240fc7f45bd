"""A real agent serving an ONNX Runtime expert beside a llama.cpp one, on a real Mosquitto."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.service import Agent
from agent.settings import AgentSettings
from messages import topics
from messages.base import now_s
from messages.bus import Bus
from messages.capabilities import AgentCapabilities
from messages.jobs import Job
from messages.plan import ActivationPlan
from moe2.local.broker import LocalBroker
from tests.conftest import SMOLLM2
from tests.helpers import Recorder

FLEET = "onnx-test"


@pytest.fixture(scope="module")
def agent(mosquitto: LocalBroker, smollm2_onnx: Path) -> Iterator[Agent]:
    settings = AgentSettings.load(
        None,
        broker=mosquitto.url,
        fleet=FLEET,
        agent_id="ort",
        experts=[{"id": "smol-ort", "model": str(smollm2_onnx), "n_ctx": 512}, SMOLLM2],
        telemetry_interval_s=0.3,
        power_model_w=12.0,
    )
    service = Agent(settings)
    service.start()
    yield service
    service.stop()


def _job(request_id: str, **kw: object) -> Job:
    fields: dict[str, object] = dict(
        request_id=request_id,
        expert_id="smol-ort",
        prompt="The capital of France is",
        choices=["Berlin", "Paris"],
        timeout_s=60.0,
        issued_s=now_s(),
    )
    fields.update(kw)
    return Job(**fields)  # type: ignore[arg-type]


def test_onnx_expert_answers_through_the_agent(agent: Agent, mosquitto: LocalBroker) -> None:
    rec = Recorder(mosquitto.endpoint, FLEET)
    rec.watch(topics.AGENT_RESULTS, agent_id="ort").watch(topics.AGENT_CAPABILITIES, agent_id="ort")
    with rec:
        caps = rec.wait_for_a(AgentCapabilities)
        assert caps.backends == ["llama.cpp", "onnxruntime"]
        ort_info = next(e for e in caps.experts if e.expert_id == "smol-ort")
        assert ort_info.backend == "onnxruntime" and ort_info.format == "onnx"
        assert ort_info.file_size_bytes > 400_000_000
        bus = Bus(mosquitto.endpoint, FLEET, client_id=f"send-{time.monotonic_ns()}")
        bus.connect()
        plan = ActivationPlan(agent_id="ort", epoch=1, experts=["smol-ort"], time_s=now_s())
        bus.publish(topics.AGENT_PLAN, plan, agent_id="ort")
        loaded = rec.wait_for_a(
            AgentCapabilities,
            lambda c: any(e.expert_id == "smol-ort" and e.providers for e in c.experts),
            60,
        )
        info = next(e for e in loaded.experts if e.expert_id == "smol-ort")
        assert info.providers == agent.pool.get("smol-ort")[0].providers  # what the session uses
        assert info.quantisation == "float32 (from Q4_1)" and info.memory_bytes
        bus.publish(topics.AGENT_JOBS, _job("o-choice"), agent_id="ort")
        bus.publish(
            topics.AGENT_JOBS,
            _job("o-text", choices=None, prompt="Say hello.", max_tokens=8),
            agent_id="ort",
        )
        scored = rec.wait_for_result("o-choice", 60)
        text = rec.wait_for_result("o-text", 60)
        bus.close()
    assert scored.ok and scored.finish_reason == "scored" and scored.choice_probs[1] > 0.9
    assert text.ok and text.text and 1 <= text.completion_tokens <= 8
    for result in (scored, text):  # no sensor here: the declared model's estimate, marked so
        assert result.energy is not None
        if agent.sensor is not None and not agent.sensor.measured:
            assert result.energy.estimated and result.energy.source == "estimate"
