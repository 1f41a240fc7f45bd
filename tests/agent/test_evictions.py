"""An agent asked for an expert it does not hold (agent/experts.py ``evictions``): within its
memory budget, idle experts outside the plan make room first, then idle planned ones, least
recently used first; one with a job running never; nothing when it fits."""

from __future__ import annotations

from agent.experts import evictions

MB = 1_000_000


def test_fits_as_it_is_unloads_nothing() -> None:
    assert evictions(100 * MB, 400 * MB, {"a": 250 * MB}, set(), {"a"}) == []
    assert evictions(100 * MB, None, {"a": 10**12}, set(), set()) == []


def test_unplanned_idle_experts_go_first_least_recently_used_first() -> None:
    held = {"old": 100 * MB, "planned": 100 * MB, "newer": 100 * MB}
    assert evictions(150 * MB, 400 * MB, held, set(), {"planned"}) == ["old"]
    assert evictions(250 * MB, 400 * MB, held, set(), {"planned"}) == ["old", "newer"]
    # only then the plan's own (it is loaded again at its next job)
    assert evictions(350 * MB, 400 * MB, held, set(), {"planned"}) == ["old", "newer", "planned"]


def test_a_running_expert_is_never_unloaded_the_job_waits() -> None:
    held = {"running": 250 * MB, "idle": 50 * MB}
    assert evictions(100 * MB, 300 * MB, held, {"running"}, set()) is None
    assert evictions(50 * MB, 300 * MB, held, {"running"}, set()) == ["idle"]


def test_an_expert_over_the_budget_alone_is_left_to_the_load_to_refuse() -> None:
    assert evictions(500 * MB, 300 * MB, {"a": 100 * MB}, set(), set()) == []
