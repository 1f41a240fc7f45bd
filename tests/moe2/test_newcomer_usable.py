"""A newcomer to a MoE² fleet is usable at once (issue 24), on real processes: Mosquitto, a
controller with the lab profile and gate, real SmolLM2 and Gemma 3 agents.

- An agent with an expert the gate does not know joins: a prompt that names the expert is
  answered by it while it is profiled, and the answer says it is being profiled and how far;
  ``moe2 costs`` (at 80 columns, every key whole) and ``moe2 fleet`` show the progress; a
  stratified sample enters it into the gate, the rest of the suite refines it afterwards.
- The cache agents (examples/cache-*.toml: four experts each, memory budgets that hold only some
  of them, a SlimCaching plan in force): their newcomers are probed one at a time per agent, no
  probe fails for want of memory, and every one finishes profiling.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.gate.gate import Gate, file_sha256
from controller.profile import load_profile, save_profile
from controller.suite import save_suite, stratified
from messages import topics
from messages.bus import Bus
from messages.controller import ControllerEvent
from messages.costs import CostTable
from messages.events import AgentEvent
from moe2.local.broker import LocalBroker
from moe2.local.fleet import AgentSpec, LocalFleet
from tests.conftest import GEMMA3, SMOLLM2
from tests.helpers import Recorder

DATA = Path(__file__).resolve().parents[2] / "data"
NEW = "smollm2-cloze@edge-c"


def moe2(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "moe2", *args], capture_output=True, text=True, timeout=300, env=env
    )


def _lab(fleet: str, folder: Path, per_group: int) -> None:
    """The shipped lab profile (``per_group`` items of each category and split) and gate under
    this test's fleet name, and the same items as the suite newcomers are profiled on."""
    profile = load_profile(DATA / "profile-lab.json")
    kept = stratified(profile.items, per_group)
    ids = {i.id for i in kept}
    profile = profile.model_copy(
        update={
            "fleet": fleet,
            "items": kept,
            "records": {k: v for k, v in profile.records.items() if k in ids},
        }
    )
    save_profile(profile, folder / "profile.json")
    save_suite(kept, folder / "suite.jsonl")
    gate = Gate.load(DATA / "gate-lab.pt")
    gate.fleet, gate.profile_sha256 = fleet, file_sha256(folder / "profile.json")
    gate.save(folder / "gate.pt")


def _controller_args(folder: Path, config: str) -> list[str]:
    (folder / "controller.toml").write_text(config)
    return [
        "--profile", str(folder / "profile.json"), "--gate", str(folder / "gate.pt"),
        "--suite", str(folder / "suite.jsonl"), "--config", str(folder / "controller.toml"),
    ]  # fmt: skip


def _clear(mosquitto: LocalBroker, fleet: str) -> None:
    cleaner = Bus(mosquitto.endpoint, fleet, client_id=f"clean-{os.getpid()}-{fleet}")
    cleaner.connect()
    for topic in (
        topics.CONTROLLER_PLAN,
        topics.CONTROLLER_COSTS,
        topics.CONTROLLER_CACHE_PLAN,
        topics.CONTROLLER_BUDGETS,
    ):
        cleaner.clear_retained(topic)
    time.sleep(0.3)
    cleaner.close()


@pytest.fixture(scope="module")
def gated(
    mosquitto: LocalBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalFleet, Recorder]]:
    fleet_name = "newcomer"
    folder = tmp_path_factory.mktemp("newcomer")
    _lab(fleet_name, folder, 10)  # 60 train and val prompts
    # 6 prompts enter a newcomer into the gate; the 54 others refine it, one a second: the
    # progress is there to be seen for a while
    config = "newcomer_sample = 6\nnewcomer_rate_hz = 1.0\nprobe_interval_s = 5.0\n"
    fleet = LocalFleet(mosquitto.endpoint, fleet_name, folder)
    rec = Recorder(mosquitto.endpoint, fleet_name)
    rec.watch(topics.CONTROLLER_EVENTS).watch(topics.CONTROLLER_COSTS)
    fleet.start_controller(extra=_controller_args(folder, config))
    power = {"power_model_w": 15.0}
    fleet.start_agent(AgentSpec("edge-a", [{**SMOLLM2, "id": "smollm2-cloze"}], power))
    fleet.start_agent(AgentSpec("edge-b", [{**GEMMA3, "id": "gemma3-cloze"}], power))
    try:
        with rec:
            fleet.wait_ready(["edge-a", "edge-b"])
            yield fleet, rec
    finally:
        fleet.stop()
        _clear(mosquitto, fleet_name)


def _ask_named(mosquitto: LocalBroker, fleet: str, expert: str) -> dict[str, object]:
    run = moe2(
        "ask", "--broker", mosquitto.url, "--fleet", fleet, "--expert", expert,
        "--choice", "Paris", "--choice", "Rome", "--timeout", "120", "--json",
        "The capital of France is",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    answer: dict[str, object] = json.loads(run.stdout)
    return answer


def test_a_newcomer_answers_when_named_and_says_how_far_its_profiling_is(
    gated: tuple[LocalFleet, Recorder], mosquitto: LocalBroker
) -> None:
    fleet, rec = gated
    fleet.start_agent(
        AgentSpec("edge-c", [{**SMOLLM2, "id": "smollm2-cloze"}], {"power_model_w": 1.5})
    )
    joined = rec.wait_for_event(ControllerEvent, NEW, kind="profiling", timeout_s=120)
    assert "answers prompts that name it" in joined.reason and "6 suite prompts" in joined.reason

    # named, it answers at once: not planned, not in the gate yet
    answer = _ask_named(mosquitto, fleet.fleet, NEW)
    assert answer["status"] == "ok", answer
    (output,) = answer["experts"]  # type: ignore[misc]
    assert (output["expert_id"], output["agent_id"]) == ("smollm2-cloze", "edge-c")
    assert output["choice_probs"] is not None
    assert re.search(r"(being profiled|profiling goes on): \d+/(6|60) prompts", output["profiling"])

    # the progress, in the cost table, `moe2 costs` (80 columns) and `moe2 fleet`
    run = moe2("costs", "--broker", mosquitto.url, "--fleet", fleet.fleet, "--json")
    assert run.returncode == 0, run.stderr
    row = next(r for r in json.loads(run.stdout)["experts"] if r["key"] == NEW)
    assert row["profile_of"] in (6, 60) and 0 <= row["profiled"] <= row["profile_of"], row
    run = moe2("costs", "--broker", mosquitto.url, "--fleet", fleet.fleet)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), run.stdout
    for key in ("smollm2-cloze@edge-a", "gemma3-cloze@edge-b", NEW):
        assert any(line.split()[:1] == [key] for line in lines), (key, run.stdout)  # whole
    assert "profiling" in run.stdout or "refining" in run.stdout, run.stdout
    run = moe2("fleet", "--broker", mosquitto.url, "--fleet", fleet.fleet, columns=200)
    assert run.returncode == 0, run.stderr
    assert re.search(rf"{NEW}: (being profiled|in the gate, refined).* \d+/(6|60)", run.stdout)
    run = moe2("fleet", "--broker", mosquitto.url, "--fleet", fleet.fleet, "--json")
    edge_c = next(r for r in json.loads(run.stdout) if r["agent_id"] == "edge-c")
    assert edge_c["profiling"]["smollm2-cloze"]["of"] in (6, 60), edge_c

    # the sample enters it into the gate; the rest of the suite refines it in the background
    entered = rec.wait_for_event(ControllerEvent, "gate retrained with", timeout_s=300)
    assert NEW in entered.reason
    refined = rec.wait_for_event(ControllerEvent, "gate refined", timeout_s=600)
    assert NEW in refined.reason
    table = rec.wait_for_a(
        CostTable,
        lambda t: any(r.key == NEW and r.in_gate and r.profiled is None for r in t.experts),
        timeout_s=60,
    )
    assert table.experts
    answer = _ask_named(mosquitto, fleet.fleet, NEW)
    assert answer["status"] == "ok" and answer["experts"][0].get("profiling") is None  # type: ignore[index]


CACHE_EXPERTS = [
    {"id": "smollm2-cloze", "model": "smollm2-135m", "template": "cloze", "n_ctx": 512},
    {"id": "smollm2-qa", "model": "smollm2-135m", "template": "qa", "n_ctx": 512},
    {"id": "gemma3-cloze", "model": "gemma3-270m", "template": "cloze", "n_ctx": 512},
    {"id": "gemma3-qa", "model": "gemma3-270m", "template": "qa", "n_ctx": 512},
]
CACHE_BUDGET_MB = {"edge-a": 400.0, "edge-b": 300.0}  # as examples/cache-a.toml, cache-b.toml
CACHE_NEW = {"gemma3-cloze@edge-a", "gemma3-qa@edge-a", "smollm2-cloze@edge-b", "smollm2-qa@edge-b"}


def test_the_cache_agents_newcomers_finish_profiling_within_their_budgets(
    mosquitto: LocalBroker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    fleet_name = "cachenew"
    folder = tmp_path_factory.mktemp("cachenew")
    _lab(fleet_name, folder, 2)  # 12 train and val prompts
    config = "newcomer_sample = 6\nnewcomer_rate_hz = 4.0\nprobe_interval_s = 5.0\n"
    fleet = LocalFleet(mosquitto.endpoint, fleet_name, folder)
    rec = Recorder(mosquitto.endpoint, fleet_name)
    rec.watch(topics.CONTROLLER_EVENTS).watch(topics.CONTROLLER_COSTS).watch(topics.AGENT_EVENTS)
    try:
        with rec:
            fleet.start_controller(extra=_controller_args(folder, config))
            for agent_id, budget in CACHE_BUDGET_MB.items():
                settings = {"expert_memory_budget_mb": budget, "power_model_w": 15.0}
                fleet.start_agent(AgentSpec(agent_id, CACHE_EXPERTS, settings))
            for key in sorted(CACHE_NEW):
                rec.wait_for_event(ControllerEvent, key, kind="profiling", timeout_s=180)
            run = moe2(
                "cache-plan", "--fleet", fleet_name, "--broker", mosquitto.url,
                "--profile", str(folder / "profile.json"), "--gate", str(folder / "gate.pt"),
                "--top-k", "2", "--apply", "--json",
            )  # fmt: skip
            assert run.returncode == 0, run.stdout + run.stderr
            done = rec.wait_for_a(
                CostTable,
                lambda t: all(
                    any(r.key == k and r.in_gate and r.profiled is None for r in t.experts)
                    for k in CACHE_NEW
                ),
                timeout_s=900,
            )
            assert done.experts
            failures = [
                e.reason
                for e in rec.messages(AgentEvent)
                if e.kind == "job_failed" and ("budget" in e.reason or "Memory" in e.reason)
            ]
            assert failures == [], failures
            retrained = [
                e.reason
                for e in rec.messages(ControllerEvent)
                if e.kind == "profiling" and "failed" in e.reason
            ]
            assert retrained == [], retrained
    finally:
        fleet.stop()
        _clear(mosquitto, fleet_name)
