"""The live cost model, the drift deadband and the infeasibility explanation: pure units."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.costs import CostModel, Seed
from controller.drift import DriftDetector
from controller.explain import infeasible
from controller.selection.from_profile import ExpertCost
from messages.budgets import Budgets

SEED = Seed(
    energy_j=2.0,
    energy_by_category={"geo": 1.0, "math": 4.0},
    delay_s={"geo": 0.1, "math": 0.5},
    estimated=True,
)


def model() -> CostModel:
    return CostModel({"e@a": SEED}, window=5, min_samples=3)


def test_costs_start_at_the_profile_and_follow_the_median_of_recent_ratios() -> None:
    m = model()
    assert m.current("e@a").origin == "profile"  # type: ignore[union-attr]
    assert m.costs()["e@a"].delay_s == {"geo": 0.1, "math": 0.5}
    m.observe("e@a", "geo", 0.2, 2.0, "estimate", True)  # twice the profile on geography
    m.observe("e@a", "math", 1.0, 8.0, "estimate", True)  # and on math
    assert m.current("e@a").origin == "profile"  # type: ignore[union-attr]  # 2 < min_samples
    m.observe("e@a", "geo", 0.2, 2.0, "estimate", True)
    live = m.current("e@a")
    assert live is not None and live.origin == "live" and live.delay_samples == 3
    # one ratio pooled over categories: math moved though only twice observed
    assert live.cost.delay_s == pytest.approx({"geo": 0.2, "math": 1.0})
    assert live.cost.energy_j == pytest.approx(4.0) and live.cost.energy_estimated
    # robust: one wild sample does not move the median
    m.observe("e@a", "geo", 50.0)
    assert m.costs()["e@a"].delay_s["geo"] == pytest.approx(0.2)
    # rolling: five fast samples replace the window
    for _ in range(5):
        m.observe("e@a", "geo", 0.1)
    assert m.costs()["e@a"].delay_s["geo"] == pytest.approx(0.1)


def test_unknown_experts_and_categories_teach_nothing() -> None:
    m = model()
    assert not m.observe("x@y", "geo", 1.0)
    assert not m.observe("e@a", None, 1.0)
    assert not m.observe("e@a", "poetry", 1.0)
    assert m.current("e@a").delay_samples == 0  # type: ignore[union-attr]


def test_measured_energy_is_preferred_and_unmarked_only_without_estimates() -> None:
    m = CostModel({"e@a": Seed(2.0, {"geo": 2.0}, {"geo": 0.1}, estimated=False)}, 5, 3)
    for _ in range(3):
        m.observe("e@a", "geo", 0.1, 10.0, "estimate", True)
    assert m.costs()["e@a"].energy_j == pytest.approx(10.0) and m.costs()["e@a"].energy_estimated
    for _ in range(3):
        m.observe("e@a", "geo", 0.1, 3.0, "rapl", False)
    live = m.current("e@a")
    assert live is not None and live.cost.energy_j == pytest.approx(3.0)
    assert not live.cost.energy_estimated and live.energy_source == "rapl"


def test_costs_carried_from_another_controller_go_on_as_its_rolling_window() -> None:
    """A controller taking over starts where the other left an expert (3x slower), and its
    own samples move the median only once they outnumber the carried ones, as they would have
    in the other's window."""
    m = model()  # window 5, min_samples 3
    assert not m.carry("x@y", 3.0, None, False, (5, 0))  # not an expert of this profile
    assert m.carry("e@a", 3.0, None, False, (40, 0))  # 40 samples behind it: fills the window
    live = m.current("e@a")
    assert live is not None and live.origin == "live" and live.delay_samples == 40
    assert live.cost.delay_s == pytest.approx({"geo": 0.3, "math": 1.5})
    assert live.energy_samples == 0 and live.cost.energy_j == pytest.approx(2.0)  # not carried
    for _ in range(2):
        m.observe("e@a", "geo", 0.1)  # recovered: back at the profile
    assert m.costs()["e@a"].delay_s["geo"] == pytest.approx(0.3)  # 3 carried of 5 still rule
    m.observe("e@a", "geo", 0.1)
    assert m.costs()["e@a"].delay_s["geo"] == pytest.approx(0.1)
    # measured energy lands in the measured window, which outranks estimates
    m = CostModel({"e@a": Seed(2.0, {"geo": 2.0}, {"geo": 0.1}, estimated=False)}, 5, 3)
    m.carry("e@a", None, 0.5, True, (0, 3))
    for _ in range(3):
        m.observe("e@a", "geo", 0.1, 10.0, "estimate", True)
    live = m.current("e@a")
    assert live is not None and live.cost.energy_j == pytest.approx(1.0)
    assert not live.cost.energy_estimated


def test_costs_survive_a_restart(tmp_path: Path) -> None:
    m = model()
    for _ in range(4):
        m.observe("e@a", "geo", 0.3, 3.0, "estimate", True)
    m.save(tmp_path / "costs.json")
    again = model()
    assert again.load(tmp_path / "costs.json") == 1
    assert again.costs() == m.costs() and again.current("e@a").delay_samples == 4  # type: ignore[union-attr]
    (tmp_path / "bad.json").write_text("{oops")
    assert model().load(tmp_path / "bad.json") == 0


def cost(energy: float, delay: float) -> ExpertCost:
    return ExpertCost(energy_j=energy, delay_s={"geo": delay}, energy_estimated=True)


def test_drift_has_a_deadband_both_ways_and_a_cooldown() -> None:
    d = DriftDetector(threshold=0.5, cooldown_s=10.0)
    d.adopt({"e@a": cost(2.0, 0.1)}, now=0.0)
    assert d.due({"e@a": cost(2.9, 0.14)}, now=20.0) == []  # +45 %, +40 %: inside the band
    assert d.due({"e@a": cost(2.0, 0.3)}, now=5.0) == []  # past it, but in the cool-down
    moves = d.due({"e@a": cost(2.0, 0.3)}, now=20.0)
    assert [(m.key, m.what) for m in moves] == [("e@a", "delay geo")]
    assert "(+200%)" in str(moves[0])
    d.adopt({"e@a": cost(2.0, 0.3)}, now=20.0)
    assert d.due({"e@a": cost(2.0, 0.22)}, now=40.0) == []  # back a little: no flap
    down = d.due({"e@a": cost(0.9, 0.1)}, now=40.0)  # -55 % energy, -67 % delay
    assert {m.what for m in down} == {"energy", "delay geo"}
    assert d.due({"e@a": cost(0.9, 0.1)}, now=40.0, keys={"other@b"}) == []
    with pytest.raises(ValueError):
        DriftDetector(threshold=0)


def test_infeasible_budgets_name_each_experts_cost() -> None:
    costs = {"a@x": cost(2.0, 0.5), "b@y": cost(3.0, 0.2)}
    assert infeasible(costs, Budgets(energy_j=2.5), ["a@x", "b@y"]) is None
    why = infeasible(costs, Budgets(energy_j=2.5, delay_s={"geo": 0.3}), ["a@x", "b@y"])
    assert why is not None
    assert "a@x: geo 0.5 s > 0.3 s" in why and "b@y: energy 3 J (est.) > 2.5 J" in why
    assert "cheapest is a@x at 2 J" in why
    assert infeasible(costs, Budgets(energy_j=1.0), ["b@y"]) is not None
    assert infeasible(costs, Budgets(energy_j=1.0), []) is None  # nobody online: not budgets
