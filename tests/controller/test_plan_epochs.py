"""Planner: every expert of every online agent, new epochs only when the assignment changes."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from controller import plan_epochs as planner_module
from controller.plan_epochs import Planner
from messages import ActivationPlan, FleetPlan


def plans(result: tuple[FleetPlan, list[ActivationPlan]] | None) -> dict[str, list[str]]:
    assert result is not None
    return {p.agent_id: p.experts for p in result[1]}


def test_first_replan_activates_every_expert_of_every_online_agent() -> None:
    planner = Planner()
    before_ms = int(time.time() * 1000)
    result = planner.replan({"pi-5": ["smol"], "orin-1": ["smol", "gemma"]})
    assert result is not None
    fleet, per_agent = result
    assert fleet.assignments == {"orin-1": ["gemma", "smol"], "pi-5": ["smol"]}
    assert [p.agent_id for p in per_agent] == ["orin-1", "pi-5"]  # sorted by agent
    assert [p.experts for p in per_agent] == [["gemma", "smol"], ["smol"]]
    assert fleet.epoch >= before_ms
    assert {p.epoch for p in per_agent} == {fleet.epoch}
    assert planner.epoch == fleet.epoch
    assert fleet.time_s == pytest.approx(time.time(), abs=60)


def test_same_input_gives_none() -> None:
    planner = Planner()
    online = {"orin-1": ["smol", "gemma"]}
    first = planner.replan(online)
    assert first is not None
    epoch = planner.epoch
    assert planner.replan(online) is None
    assert planner.replan({"orin-1": ["gemma", "smol"]}) is None  # order does not matter
    assert planner.epoch == epoch


def test_empty_fleet_is_no_change_from_the_start() -> None:
    planner = Planner()
    assert planner.replan({}) is None
    assert planner.epoch == 0


def test_epochs_strictly_increase_even_when_the_clock_stands_still(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(planner_module, "time", SimpleNamespace(time=lambda: 1_700_000_000.0))
    planner = Planner()
    epochs = []
    for online in [{"a": ["x"]}, {"a": ["x", "y"]}, {"a": ["y"]}, {}, {"a": ["x"]}]:
        result = planner.replan(online)
        assert result is not None
        epochs.append(result[0].epoch)
    assert epochs == [1_700_000_000_000 + i for i in range(5)]


def test_epochs_strictly_increase_when_the_clock_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_700_000_000.0]
    monkeypatch.setattr(planner_module, "time", SimpleNamespace(time=lambda: now[0]))
    planner = Planner()
    first = planner.replan({"a": ["x"]})
    now[0] -= 3600  # an NTP step back
    second = planner.replan({"a": ["y"]})
    now[0] += 7200
    third = planner.replan({"a": ["z"]})
    assert first is not None and second is not None and third is not None
    assert first[0].epoch == 1_700_000_000_000
    assert second[0].epoch == 1_700_000_000_001
    assert third[0].epoch == 1_700_003_600_000


def test_epochs_follow_wall_clock_milliseconds_across_restarts() -> None:
    old = Planner()
    result = old.replan({"a": ["x"]})
    assert result is not None
    time.sleep(0.002)
    restarted = Planner()
    again = restarted.replan({"a": ["x"]})
    assert again is not None
    assert again[0].epoch > result[0].epoch


def test_only_changed_agents_get_a_per_agent_plan() -> None:
    planner = Planner()
    planner.replan({"orin-1": ["smol", "gemma"], "pi-5": ["smol"]})
    result = planner.replan({"orin-1": ["smol", "gemma"], "pi-5": ["smol", "gemma"], "new": []})
    assert plans(result) == {"new": [], "pi-5": ["gemma", "smol"]}
    assert result is not None
    assert result[0].assignments == {
        "new": [],
        "orin-1": ["gemma", "smol"],
        "pi-5": ["gemma", "smol"],
    }


def test_agent_going_offline_changes_the_fleet_plan_only() -> None:
    planner = Planner()
    planner.replan({"orin-1": ["smol"], "pi-5": ["smol"]})
    result = planner.replan({"orin-1": ["smol"]})
    assert result is not None
    fleet, per_agent = result
    assert fleet.assignments == {"orin-1": ["smol"]}
    assert per_agent == []
    # When it returns, it gets its plan again.
    assert plans(planner.replan({"orin-1": ["smol"], "pi-5": ["smol"]})) == {"pi-5": ["smol"]}


def test_replan_does_not_keep_the_callers_lists() -> None:
    planner = Planner()
    experts = ["b", "a"]
    planner.replan({"x": experts})
    experts.append("c")
    assert planner.assignments == {"x": ["a", "b"]}
    assert planner.replan({"x": ["a", "b"]}) is None


def test_active_drops_offline_agents() -> None:
    planner = Planner()
    planner.replan({"orin-1": ["smol", "gemma"], "pi-5": ["smol"]})
    everyone = {"orin-1": ["smol", "gemma"], "pi-5": ["smol"]}
    assert planner.active(everyone) == [("orin-1", "gemma"), ("orin-1", "smol"), ("pi-5", "smol")]
    assert planner.active({"pi-5": ["smol"]}) == [("pi-5", "smol")]
    assert planner.active({}) == []


def test_active_only_lists_planned_agents() -> None:
    planner = Planner()
    planner.replan({"orin-1": ["smol"]})
    assert planner.active({"orin-1": ["smol"], "unplanned": ["gemma"]}) == [("orin-1", "smol")]
    assert Planner().active({"orin-1": ["smol"]}) == []
