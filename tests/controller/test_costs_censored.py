"""Censored samples in the live cost model: a job cut without a result (left out by an early
answer, cancelled at its prompt's deadline, a probe unanswered) says its delay was at least
as long as it ran. Pure units."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.costs import CostModel, Seed

SEED = Seed(
    energy_j=2.0,
    energy_by_category={"geo": 1.0, "math": 4.0},
    delay_s={"geo": 0.1, "math": 0.5},
    estimated=True,
)


def model() -> CostModel:
    return CostModel({"e@a": SEED}, window=5, min_samples=3)


def test_cuts_above_the_estimate_raise_it_and_count_as_samples() -> None:
    m = model()
    for _ in range(3):
        m.observe("e@a", "geo", 0.1)  # as profiled: ratio 1
    # three jobs cut after 0.5 s on geography: at least 5 x the profile
    assert all(m.observe_cut("e@a", "geo", 0.5) for _ in range(3))
    live = m.current("e@a")
    assert live is not None
    assert live.delay_ratio == pytest.approx(5.0)  # the median of 1, 1, 1, 5, 5 -> 5 of 5
    assert live.cost.delay_s["math"] == pytest.approx(2.5)  # pooled over categories
    assert live.delay_samples == 6 and live.cut_samples == 3


def test_a_bound_never_lifts_the_estimate_past_itself() -> None:
    m = model()
    for _ in range(5):
        m.observe_cut("e@a", "geo", 0.3)  # every job cut at 0.3 s: at least 3 x
    live = m.current("e@a")
    assert live is not None and live.delay_ratio == pytest.approx(3.0)


def test_cuts_at_or_below_the_estimate_teach_nothing() -> None:
    m = model()
    for _ in range(3):
        m.observe("e@a", "geo", 0.2)  # twice the profile
    # a fast expert left out after 0.05 s because a faster one decided the answer: no news
    assert not m.observe_cut("e@a", "geo", 0.05)
    assert not m.observe_cut("e@a", "geo", 0.2)
    live = m.current("e@a")
    assert live is not None and live.delay_ratio == pytest.approx(2.0)
    assert live.delay_samples == 3 and live.cut_samples == 0


def test_before_enough_samples_a_cut_is_news_only_above_the_profile() -> None:
    m = model()
    assert not m.observe_cut("e@a", "math", 0.4)  # under the profiled 0.5 s
    assert m.observe_cut("e@a", "math", 1.0)  # twice the profile
    assert not m.observe_cut("e@a", "poetry", 9.0)  # a category without a seed
    assert not m.observe_cut("x@y", "geo", 9.0)  # an expert without a seed
    assert not m.observe_cut("e@a", None, 9.0)  # a prompt without a category


def test_censored_counts_survive_a_restart(tmp_path: Path) -> None:
    m = model()
    for _ in range(3):
        m.observe_cut("e@a", "geo", 0.4)
    m.save(tmp_path / "costs.json")
    again = model()
    assert again.load(tmp_path / "costs.json") == 1
    live = again.current("e@a")
    assert live is not None and live.cut_samples == 3 and live.delay_ratio == pytest.approx(4.0)
