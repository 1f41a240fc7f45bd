"""SlimCaching on a live fleet: `moe2 cache-plan --fleet ... --apply` makes plans the agents
apply, within their memory budgets. Real agents, Mosquitto, the committed lab profile and gate
(the fleet is named "lab" like them, so their latencies and routing describe it)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moe2.client.fleet_reader import read_fleet
from moe2.local.broker import LocalBroker
from moe2.local.fleet import AgentSpec, LocalFleet

DATA = Path(__file__).resolve().parents[2] / "data"
EXPERTS = [
    {"id": "smollm2-cloze", "model": "smollm2-135m", "template": "cloze", "n_ctx": 512},
    {"id": "smollm2-qa", "model": "smollm2-135m", "template": "qa", "n_ctx": 512},
    {"id": "gemma3-cloze", "model": "gemma3-270m", "template": "cloze", "n_ctx": 512},
]
BUDGET_MB = {"edge-a": 150.0, "edge-b": 300.0}  # SmolLM2 ~ 90 MB, Gemma 3 ~ 240 MB resident


def moe2(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moe2", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def fleet(mosquitto: LocalBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    fleet = LocalFleet(mosquitto.endpoint, "lab", tmp_path_factory.mktemp("cache"))
    fleet.start_controller()
    for agent_id, budget in BUDGET_MB.items():
        fleet.start_agent(
            AgentSpec(agent_id, EXPERTS, settings={"expert_memory_budget_mb": budget})
        )
    try:
        fleet.wait_ready(list(BUDGET_MB))
        yield fleet
    finally:
        fleet.stop()


def test_cache_plan_from_the_fleet_is_applied_within_budgets(
    fleet: LocalFleet, mosquitto: LocalBroker
) -> None:
    run = moe2(
        "cache-plan",
        "--fleet",
        "lab",
        "--broker",
        mosquitto.url,
        "--profile",
        str(DATA / "profile-lab.json"),
        "--gate",
        str(DATA / "gate-lab.pt"),
        "--top-k",
        "2",
        "--apply",
        "--json",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)
    placement = {s: sorted(e for _, e in pairs) for s, pairs in result["placement"].items()}
    assert set(placement) == set(BUDGET_MB) and any(placement.values())
    deadline = time.monotonic() + 60
    while True:
        registry, plan = read_fleet(mosquitto.endpoint, "lab", 1.5)
        loaded = {
            r.agent_id: sorted(r.telemetry.loaded_experts) for r in registry.agents() if r.telemetry
        }
        if loaded == placement or time.monotonic() > deadline:
            break
    assert loaded == placement
    assert plan is not None and plan.algorithm.startswith("cache:")
    for record in registry.agents():
        caps = record.capabilities
        assert caps is not None and caps.expert_memory_budget_bytes is not None
        sizes = {e.expert_id: e.memory_bytes or e.file_size_bytes for e in caps.experts}
        assert sum(sizes[e] for e in loaded[record.agent_id]) <= caps.expert_memory_budget_bytes


def test_cache_plans_that_do_not_fit_are_refused(fleet: LocalFleet, mosquitto: LocalBroker) -> None:
    from messages.base import now_s
    from messages.cache_plan import CachePlan
    from moe2.client.cache_fleet import apply_cache_plan

    too_big = CachePlan(
        placement={"edge-a": ["smollm2-cloze", "gemma3-cloze"]}, algorithm="by-hand", time_s=now_s()
    )
    with pytest.raises(RuntimeError, match="over its budget"):
        apply_cache_plan(mosquitto.endpoint, "lab", too_big)
    unknown = CachePlan(placement={"edge-z": ["smollm2-cloze"]}, algorithm="x", time_s=now_s())
    with pytest.raises(RuntimeError, match="unknown agent 'edge-z'"):
        apply_cache_plan(mosquitto.endpoint, "lab", unknown)


def test_budgets_without_a_gate_are_refused_with_the_reason(
    fleet: LocalFleet, mosquitto: LocalBroker
) -> None:
    run = moe2("budgets", "--fleet", "lab", "--broker", mosquitto.url, "--energy-j", "5")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "budgets need a selection" in run.stderr
