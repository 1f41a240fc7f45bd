"""The fleet's configuration is the fleet's, on real processes: a controller with the lab
profile, gate and budgets, real SmolLM2 and Gemma 3 agents on Mosquitto.

- A standby started bare (no --profile/--gate, as in the README) fetches the fleet's
  configuration from the broker; after ``kill -9`` of the active controller it answers with the
  same gate weights and budgets (not uniform weights without budgets), from the live costs the
  dead one learnt.
- ``--replace-config`` makes another configuration the fleet's.
- A controller started with another gate says so (its status, an event) and does not lead: when
  the active one dies, a younger bare standby takes over instead.
- ``moe2 fleet`` shows the configuration in force.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from controller.gate.gate import Gate, file_sha256
from controller.profile import load_profile, save_profile
from controller.suite import stratified
from messages import topics
from messages.answers import Answer
from messages.budgets import Budgets
from messages.bus import Bus
from messages.controller import ControllerEvent, ControllerStatus, FleetPlan
from messages.costs import CostTable
from messages.expert_key import expert_key
from messages.fleet_config import FleetConfig
from messages.prompts import Prompt
from moe2.local.broker import LocalBroker
from moe2.local.fleet import AgentSpec, LocalFleet, wait_until
from tests.conftest import GEMMA3, SMOLLM2
from tests.helpers import Recorder

FLEET = "cfg"
DATA = Path(__file__).resolve().parents[2] / "data"
BUDGETS = Budgets(energy_j=500.0, delay_s={"geography": 120.0}, top_k=2)
QUESTION = Prompt(
    prompt="The capital of Kenya is",
    choices=["Nairobi", "Lima", "Oslo", "Hanoi"],
    category="geography",
    timeout_s=120.0,
)


def _lab_files(folder: Path) -> tuple[Path, Path, Path]:
    """The shipped lab profile (a stratified part, quick to load) and gate under this fleet's
    name, and a second gate: the same with its weights perturbed."""
    profile = load_profile(DATA / "profile-lab.json")
    kept = stratified(profile.items, 10)
    ids = {i.id for i in kept}
    profile = profile.model_copy(
        update={
            "fleet": FLEET,
            "items": kept,
            "records": {k: v for k, v in profile.records.items() if k in ids},
        }
    )
    profile_path, gate_path, other_path = (
        folder / "profile.json",
        folder / "gate.pt",
        folder / "other-gate.pt",
    )
    save_profile(profile, profile_path)
    gate = Gate.load(DATA / "gate-lab.pt")
    gate.fleet, gate.profile_sha256 = FLEET, file_sha256(profile_path)
    gate.save(gate_path)
    with torch.no_grad():
        for parameter in gate.net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5, alpha=1.0)
    gate.save(other_path)
    return profile_path, gate_path, other_path


def _configured(folder: Path, gate: str = "gate.pt") -> list[str]:
    return [
        "--config", str(folder / "controller.toml"),
        "--profile", str(folder / "profile.json"), "--gate", str(folder / gate),
        "--energy-j", "500", "--delay-s", "geography=120", "--top-k", "2",
    ]  # fmt: skip


def _bare(folder: Path) -> list[str]:
    return ["--config", str(folder / "controller.toml")]


@pytest.fixture(scope="module")
def cfg(
    mosquitto: LocalBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalFleet, Recorder]]:
    folder = tmp_path_factory.mktemp("cfg")
    _lab_files(folder)
    # every answer waits for both experts (early answers would leave one out at random), and
    # statuses come every second, so a standby is seen standing by
    (folder / "controller.toml").write_text("early_answers = false\nstatus_interval_s = 1.0\n")
    fleet = LocalFleet(mosquitto.endpoint, FLEET, folder)
    rec = Recorder(mosquitto.endpoint, FLEET)
    for topic in (topics.CONTROLLER_STATUS, topics.CONTROLLER_EVENTS, topics.CONTROLLER_CONFIG):
        rec.watch(topic)
    rec.watch(topics.ANSWERS).watch(topics.CONTROLLER_PLAN).watch(topics.CONTROLLER_COSTS)
    fleet.start_controller("main", extra=_configured(folder))
    power = {"power_model_w": 15.0}
    fleet.start_agent(AgentSpec("edge-a", [{**SMOLLM2, "id": "smollm2-cloze"}], power))
    fleet.start_agent(AgentSpec("edge-b", [{**GEMMA3, "id": "gemma3-cloze"}], power))
    try:
        with rec:
            fleet.wait_ready(["edge-a", "edge-b"])
            yield fleet, rec
    finally:
        fleet.stop()
        cleaner = Bus(mosquitto.endpoint, FLEET, client_id=f"clean-{os.getpid()}")
        cleaner.connect()
        for topic in (topics.CONTROLLER_PLAN, topics.CONTROLLER_COSTS, topics.CONTROLLER_CONFIG):
            cleaner.clear_retained(topic)
        time.sleep(0.3)
        cleaner.close()


def _ask(mosquitto: LocalBroker, rec: Recorder, request_id: str) -> Answer:
    bus = Bus(mosquitto.endpoint, FLEET, client_id=f"ask-{request_id}")
    bus.connect()
    try:
        prompt = QUESTION.model_copy(update={"request_id": request_id})
        bus.publish(topics.PROMPTS, prompt).wait_for_publish(5)
    finally:
        bus.close()
    answer = rec.wait_for_answer(request_id, timeout_s=180)
    assert answer.status == "ok", answer
    return answer


def _weights(answer: Answer) -> dict[str, float]:
    return {expert_key(e.agent_id, e.expert_id): e.weight for e in answer.experts}


def _status(rec: Recorder, controller_id: str) -> ControllerStatus | None:
    mine = [s for s in rec.messages(ControllerStatus) if s.controller_id == controller_id]
    return mine[-1] if mine else None


def _holds(rec: Recorder, controller_id: str, config_id: str) -> bool:
    status = _status(rec, controller_id)
    return (
        status is not None
        and status.state == "online"
        and status.config_id == config_id
        and status.config_problem is None
    )


def _fleet_config(rec: Recorder) -> FleetConfig:
    return rec.wait_for_a(FleetConfig, lambda c: c.controller_id == "main", timeout_s=60)


def test_a_bare_standby_takes_over_with_the_gate_and_budgets(
    cfg: tuple[LocalFleet, Recorder], mosquitto: LocalBroker
) -> None:
    fleet, rec = cfg
    config = _fleet_config(rec)
    assert config.budgets == BUDGETS and config.gate.name == "gate.pt"
    assert config.gate.sha256 == file_sha256(fleet.workdir / "gate.pt")
    fleet.start_controller("backup", extra=_bare(fleet.workdir))  # as the README's standby
    assert wait_until(lambda: _holds(rec, "backup", config.config_id), 180), (
        _status(rec, "backup"),
        fleet.log_tail("backup"),
    )
    adopted = rec.wait_for_event(ControllerEvent, "adopted the fleet's", kind="config")
    assert config.config_id[:12] in adopted.reason
    for n in range(3):  # results the active controller learns live costs from
        _ask(mosquitto, rec, f"warm-{n}")
    before = _ask(mosquitto, rec, "before-takeover")
    assert before.budgets == BUDGETS
    planned = [p for p in rec.messages(FleetPlan) if p.controller_id == "main"][-1]
    rec.wait_for_a(
        CostTable,
        lambda t: t.controller_id == "main" and any(r.origin == "live" for r in t.experts),
        timeout_s=120,
    )
    fleet.kill("main", signal.SIGKILL)
    assert wait_until(lambda: getattr(_status(rec, "backup"), "role", "") == "active", 120), (
        fleet.log_tail("backup")
    )
    carried = rec.wait_for_event(ControllerEvent, "live costs", kind="takeover", timeout_s=60)
    assert "learnt by main" in carried.reason  # the live costs too, not the profile's
    replanned = rec.wait_for_plan(lambda p: p.controller_id == "backup", timeout_s=60)
    # the MoE² selection under the same budgets, not every expert ("all") without a gate
    assert replanned.algorithm == planned.algorithm != "all"
    assert replanned.assignments == planned.assignments
    after = _ask(mosquitto, rec, "after-takeover")
    assert _weights(after).keys() == _weights(before).keys()
    for key, weight in _weights(before).items():
        assert _weights(after)[key] == pytest.approx(weight, abs=1e-6)
    assert after.budgets == before.budgets == BUDGETS
    costs = rec.wait_for_a(CostTable, lambda t: t.controller_id == "backup", timeout_s=60)
    assert costs.budgets == BUDGETS

    shown = subprocess.run(
        [sys.executable, "-m", "moe2", "fleet", "--broker", mosquitto.url, "--fleet", FLEET],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, COLUMNS="200"),
    )
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert f"configuration {config.config_id[:12]}" in text, shown.stdout
    assert "profile profile.json" in text and "gate gate.pt" in text and "energy 500 J" in text


def test_a_controller_with_another_gate_says_so_and_does_not_lead(
    cfg: tuple[LocalFleet, Recorder], mosquitto: LocalBroker
) -> None:
    fleet, rec = cfg
    if _status(rec, "backup") is None or _status(rec, "backup").role != "active":  # type: ignore[union-attr]
        pytest.skip("needs the takeover of the test before")
    config = rec.wait_for_a(FleetConfig, timeout_s=10)
    fleet.start_controller("rogue", extra=_configured(fleet.workdir, "other-gate.pt"))
    assert wait_until(
        lambda: "refusing to lead" in (getattr(_status(rec, "rogue"), "config_problem", "") or ""),
        180,
    ), fleet.log_tail("rogue")
    said = rec.wait_for_event(ControllerEvent, "refusing to lead", kind="config", timeout_s=30)
    assert "other-gate.pt" in said.reason and "--replace-config" in said.reason
    assert "refusing to lead" in fleet.log_tail("rogue", 200)

    # the rogue is older than the next standby; when the active one dies, that one leads
    fleet.start_controller("late", extra=_bare(fleet.workdir))
    assert wait_until(lambda: _holds(rec, "late", config.config_id), 180), fleet.log_tail("late")
    fleet.kill("backup", signal.SIGKILL)
    assert wait_until(lambda: getattr(_status(rec, "late"), "role", "") == "active", 120), (
        fleet.log_tail("late")
    )
    rogue = _status(rec, "rogue")
    assert rogue is not None and rogue.state == "online" and rogue.role == "standby"
    assert rogue.config_problem and "refusing to lead" in rogue.config_problem
    answer = _ask(mosquitto, rec, "after-second-takeover")
    assert answer.budgets == BUDGETS
    assert _holds(rec, "late", config.config_id)  # the fleet's, not the rogue's


def test_replace_config_makes_another_gate_the_fleets(
    cfg: tuple[LocalFleet, Recorder], mosquitto: LocalBroker
) -> None:
    """``--replace-config``: the other gate becomes the fleet's; the bare standby that leads
    adopts it, and the controller that refused the old one now holds the fleet's."""
    fleet, rec = cfg
    if getattr(_status(rec, "rogue"), "state", "") != "online":
        pytest.skip("needs the controllers of the test before")
    fleet.start_controller(
        "replacer", extra=[*_configured(fleet.workdir, "other-gate.pt"), "--replace-config"]
    )
    new = rec.wait_for_a(FleetConfig, lambda c: c.controller_id == "replacer", timeout_s=180)
    assert new.gate.sha256 == file_sha256(fleet.workdir / "other-gate.pt")
    rec.wait_for_event(ControllerEvent, "replacing the fleet's", kind="config", timeout_s=30)
    for name in ("rogue", "late", "replacer"):  # rogue's own is the fleet's now; late adopts it
        assert wait_until(lambda n=name: _holds(rec, n, new.config_id), 180), fleet.log_tail(name)
    assert wait_until(
        lambda: any(
            getattr(_status(rec, n), "role", "") == "active" for n in ("rogue", "late", "replacer")
        ),
        120,
    )
    answer = _ask(mosquitto, rec, "after-replacement")
    assert answer.budgets == BUDGETS
