"""The controller with a profile and a gate: optimal plans under budgets, gate weights per
prompt, run-time budgets, prompt budgets. Agents are scripted; broker and encoder are real; the
gated profile is tests/controller/gated_profile.py's."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.profile import ProfileError
from controller.service import Controller
from controller.settings import ControllerSettings
from messages import topics
from messages.budgets import Budgets
from messages.controller import ControllerEvent, FleetPlan
from messages.expert_key import expert_key
from messages.prompts import Prompt
from moe2.local.broker import LocalBroker
from tests.controller.gated_profile import estimated
from tests.controller.test_controller_service import ScriptedAgent, _ask
from tests.helpers import Recorder, clear_fleet


@pytest.fixture
def fleet(
    mosquitto: LocalBroker, gated: tuple[Path, Path], tmp_path: Path
) -> Iterator[tuple[Controller, dict[str, ScriptedAgent], Recorder]]:
    fleet_name = "sel"  # the profile's fleet; retained topics are cleared after each test
    profile_path, gate_path = gated
    settings = ControllerSettings.load(
        None,
        broker=mosquitto.url,
        fleet=fleet_name,
        profile=profile_path,
        gate=gate_path,
        energy_budget_j=2.0,
        state_dir=tmp_path / "state",  # a fresh ledger: the fleet name is reused by every test
    )
    controller = Controller(settings)
    controller.start()
    # the gate's encoder loads in the background (prompts are weighted equally until then:
    # tests/controller/test_gate_loading.py); these tests ask about the gate's weights
    assert controller.selection.gated.gate.encoder.wait(600)  # type: ignore[union-attr]
    agents = {
        "a1": ScriptedAgent(mosquitto, fleet_name, "a1", "e1"),
        "a2": ScriptedAgent(mosquitto, fleet_name, "a2", "e2"),
    }
    agents["a1"].behaviour = lambda job: estimated(job, "a1", 1.0, [0.7, 0.1, 0.1, 0.1])
    agents["a2"].behaviour = lambda job: estimated(job, "a2", 5.0, [0.1, 0.7, 0.1, 0.1])
    rec = Recorder(mosquitto.endpoint, fleet_name)
    rec.watch(topics.CONTROLLER_PLAN).watch(topics.CONTROLLER_EVENTS).watch(topics.ANSWERS)
    with rec:
        for agent in agents.values():
            agent.start()
        yield controller, agents, rec
    for agent in agents.values():
        agent.bus.close()
    controller.stop()
    clear_fleet(mosquitto.endpoint, fleet_name, controller.controller_id, list(agents))


def test_a_profile_of_another_fleet_is_refused(gated: tuple[Path, Path]) -> None:
    settings = ControllerSettings.load(None, fleet="elsewhere", profile=gated[0], gate=gated[1])
    with pytest.raises(ProfileError, match="fleet 'sel', not 'elsewhere'"):
        Controller(settings)


def _publish_budgets(mosquitto: LocalBroker, fleet: str, budgets: Budgets) -> None:
    from messages.bus import Bus

    bus = Bus(mosquitto.endpoint, fleet, client_id=f"b-{uuid.uuid4().hex[:6]}")
    bus.connect()
    bus.publish(topics.CONTROLLER_BUDGETS, budgets).wait_for_publish(5)
    bus.close()


def test_plan_is_the_optimal_set_under_the_budgets(fleet, mosquitto: LocalBroker) -> None:  # type: ignore[no-untyped-def]
    controller, agents, rec = fleet
    plan = rec.wait_for_plan(lambda p: set(p.assignments) == {"a1", "a2"})
    assert plan.assignments == {"a1": ["e1"], "a2": []} and plan.algorithm == "moe2"
    assert plan.energy_j == pytest.approx(1.0)
    name = controller.settings.fleet
    _publish_budgets(mosquitto, name, Budgets(energy_j=10.0))
    wider = rec.wait_for_plan(lambda p: p.epoch > plan.epoch)
    assert wider.assignments == {"a1": ["e1"], "a2": ["e2"]}
    assert wider.energy_j == pytest.approx(6.0)
    time.sleep(0.3)
    assert agents["a2"].plans[-1].experts == ["e2"]
    for bad, why in [
        (Budgets(energy_j=10.0, delay_s={"poetry": 1.0}), "unknown delay categories"),
        (Budgets(energy_j=0.5), "no online expert fits"),
    ]:
        _publish_budgets(mosquitto, name, bad)
        rec.wait_for_event(ControllerEvent, why)
    time.sleep(0.3)
    assert controller.budgets == Budgets(energy_j=10.0)  # the last good budgets stay
    assert controller.planner.assignments == {"a1": ["e1"], "a2": ["e2"]}


CAPITAL = "The capital of Italy is"
CITIES = ["Rome", "Oslo", "Lima", "Bern"]


@pytest.fixture
def both_planned(fleet, mosquitto: LocalBroker):  # type: ignore[no-untyped-def]
    """The fleet planned under a 10 J budget: both experts run."""
    controller, agents, rec = fleet
    rec.wait_for_plan(lambda p: p.assignments.get("a1") == ["e1"])
    _publish_budgets(mosquitto, controller.settings.fleet, Budgets(energy_j=10.0))
    rec.wait_for_plan(lambda p: p.assignments.get("a2") == ["e2"])
    return fleet


def test_a_trusted_experts_choice_answers_early_and_the_slow_one_is_left_out(  # type: ignore[no-untyped-def]
    both_planned, mosquitto: LocalBroker
) -> None:
    """The gate trusts e1 enough that its 0.7 decides the choice alone: answered early, e2
    (slow this time) is left out, not waited for."""
    controller, agents, rec = both_planned
    prompt_e2 = agents["a2"].behaviour
    agents["a2"].behaviour = lambda job: (time.sleep(1.0), prompt_e2(job))[1]
    _ask(
        mosquitto,
        controller.settings.fleet,
        Prompt(prompt=CAPITAL, request_id="e", choices=CITIES),
    )
    early = rec.wait_for_answer("e")
    assert early.answer == "Rome" and early.status == "ok"
    assert [(e.expert_id, e.agent_id) for e in early.experts] == [("e1", "a1")]
    assert [(f.expert_id, f.agent_id) for f in early.left_out] == [("e2", "a2")]


def test_waiting_for_every_expert_mixes_their_choices_with_the_gates_weights(  # type: ignore[no-untyped-def]
    both_planned, mosquitto: LocalBroker
) -> None:
    controller, agents, rec = both_planned
    controller.dispatcher.early_answers = False  # every selected expert is awaited
    _ask(
        mosquitto,
        controller.settings.fleet,
        Prompt(prompt=CAPITAL, request_id="w", choices=CITIES),
    )
    answer = rec.wait_for_answer("w")
    logits = controller.selection.gated.gate.logits([CAPITAL])[0]  # type: ignore[union-attr]
    softmax = [math.exp(v) / sum(math.exp(u) for u in logits) for v in logits]
    weights = {expert_key(e.agent_id, e.expert_id): e.weight for e in answer.experts}
    assert weights == pytest.approx(
        dict(zip(controller.selection.expert_keys, softmax, strict=True))
    )  # type: ignore[union-attr]
    assert weights["e1@a1"] > weights["e2@a2"]  # the gate trusts e1 on geography
    mix = [
        weights["e1@a1"] * a + weights["e2@a2"] * b
        for a, b in zip([0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], strict=True)
    ]
    assert answer.choice_probs == pytest.approx(mix)
    assert answer.energy_j == pytest.approx(6.0) and answer.energy_estimated
    assert answer.budgets == Budgets(energy_j=10.0) and answer.energy_j <= 10.0


def test_a_prompts_own_energy_budget_keeps_only_the_expert_that_fits(  # type: ignore[no-untyped-def]
    both_planned, mosquitto: LocalBroker
) -> None:
    controller, agents, rec = both_planned
    controller.dispatcher.early_answers = False  # every selected expert is awaited
    tight = Budgets(energy_j=2.0)
    _ask(
        mosquitto,
        controller.settings.fleet,
        Prompt(prompt=CAPITAL, request_id="t", choices=CITIES, budgets=tight),
    )
    answer = rec.wait_for_answer("t")
    assert [e.expert_id for e in answer.experts] == ["e1"] and answer.experts[0].weight == 1.0
    assert answer.budgets == Budgets(energy_j=2.0) and answer.energy_j == pytest.approx(1.0)


def test_a_prompts_top_k_of_one_runs_the_gates_favourite(  # type: ignore[no-untyped-def]
    both_planned, mosquitto: LocalBroker
) -> None:
    controller, agents, rec = both_planned
    controller.dispatcher.early_answers = False  # every selected expert is awaited
    science = "The chemical symbol for gold is"
    _ask(
        mosquitto,
        controller.settings.fleet,
        Prompt(
            prompt=science,
            request_id="k",
            choices=["Au", "Ag", "Fe", "Cu"],
            budgets=Budgets(top_k=1),
        ),
    )
    answer = rec.wait_for_answer("k")
    assert [e.expert_id for e in answer.experts] == ["e2"]  # the gate's favourite on science


def test_a_prompt_budget_no_expert_fits_fails_with_the_reason(  # type: ignore[no-untyped-def]
    both_planned, mosquitto: LocalBroker
) -> None:
    controller, agents, rec = both_planned
    controller.dispatcher.early_answers = False  # every selected expert is awaited
    budgets = Budgets(energy_j=0.1)
    _ask(
        mosquitto,
        controller.settings.fleet,
        Prompt(prompt=CAPITAL, request_id="z", budgets=budgets),
    )
    answer = rec.wait_for_answer("z")
    assert answer.status == "failed" and "fits the budgets" in (answer.error or "")


def test_a_prompt_routed_again_is_not_embedded_again(gated: tuple[Path, Path]) -> None:
    """A queued prompt is routed each time the dispatcher looks for room: the encoder runs once
    for it, and a retrained gate's logits are used at once (logits are never cached)."""
    import torch

    from controller.selection.from_profile import load_gated_profile
    from controller.selection.live import EMBEDDINGS_KEPT, LiveSelection

    live = LiveSelection(load_gated_profile(*gated))
    active = list(live.expert_keys)
    text = "Which river flows through Cairo?"
    first = live.dispatch(text, active, None, None, None)
    assert live.dispatch(text, active, None, None, None) == first
    assert live.encoded == 1
    gate = live.gated.gate
    with torch.no_grad():  # a retrained gate: other weights, the same encoder
        for parameter in gate.net.parameters():
            parameter.mul_(-1.0)
    flipped = live.dispatch(text, active, None, None, None)
    assert live.encoded == 1
    logits = gate.logits([text])[0]
    top = max(logits)
    expected = {k: math.exp(v - top) for k, v in zip(gate.expert_keys, logits, strict=True)}
    total = sum(expected.values())
    assert flipped.weights == pytest.approx({k: v / total for k, v in expected.items()})
    assert flipped.weights != pytest.approx(first.weights)
    for n in range(EMBEDDINGS_KEPT + 1):  # memory stays bounded: the oldest is forgotten
        live.dispatch(f"prompt {n}", active, None, None, None)
    live.dispatch(text, active, None, None, None)
    assert live.encoded == EMBEDDINGS_KEPT + 3


def test_a_drift_replan_keeping_the_set_publishes_no_new_epoch(fleet) -> None:  # type: ignore[no-untyped-def]
    from controller.drift import Move

    controller, agents, rec = fleet
    plan = rec.wait_for_plan(lambda p: set(p.assignments) == {"a1", "a2"})
    # e1 costs 10 % more energy: still the only set that fits the 2 J budget.
    controller.adaptation._replan_for([Move("e1@a1", "energy", 1.0, 1.1)])
    rec.wait_for_event(ControllerEvent, kind="drift")
    time.sleep(0.5)
    assert controller.planner.epoch == plan.epoch
    assert controller.planner.assignments == {"a1": ["e1"], "a2": []}
    assert all(p.epoch <= plan.epoch for p in agents["a1"].plans)  # nothing newer was sent
    assert not [m for m in rec.messages(FleetPlan) if m.epoch > plan.epoch]
