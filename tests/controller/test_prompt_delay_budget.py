"""A prompt's own delay budget plans; it does not refuse (issue 24): when every active expert's
estimated delay misses it, the prompt goes to the fastest expert its other budgets allow, and
is answered, marked late if it is; with a budget some expert meets, the experts too slow for it
are left out as before. On the small gated profile of tests/controller/gated_profile.py
(e1@a1: 0.11 s a query, e2@a2: 0.51 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.dispatch import Pair, Refused
from controller.routing import choose
from controller.selection.from_profile import load_gated_profile
from controller.selection.live import LiveSelection
from messages.budgets import Budgets
from messages.prompts import Prompt

TARGETS = [("a1", "e1"), ("a2", "e2")]


def _prompt(budgets: Budgets) -> Prompt:
    return Prompt(
        prompt="The capital of France is",
        choices=["Paris", "Rome"],
        category="geography",
        budgets=budgets,
    )


@pytest.fixture(scope="module")
def selection(gated: tuple[Path, Path]) -> LiveSelection:
    return LiveSelection(load_gated_profile(*gated))


def test_a_delay_budget_no_expert_meets_sends_the_prompt_to_the_fastest(
    selection: LiveSelection,
) -> None:
    route = choose(_prompt(Budgets(delay_s={"geography": 0.01})), TARGETS, [], selection, Budgets())
    assert route.targets == [Pair("a1", "e1")] and route.weights == {"e1@a1": 1.0}
    assert route.budgets is not None and route.budgets.delay_s == {"geography": 0.01}


def test_a_delay_budget_one_expert_meets_leaves_the_slower_out(selection: LiveSelection) -> None:
    route = choose(_prompt(Budgets(delay_s={"geography": 0.3})), TARGETS, [], selection, Budgets())
    assert route.targets == [Pair("a1", "e1")]


def test_an_energy_budget_no_expert_meets_is_still_refused(selection: LiveSelection) -> None:
    prompt = _prompt(Budgets(energy_j=0.1, delay_s={"geography": 0.01}))
    with pytest.raises(Refused, match="no active expert fits the budgets"):
        choose(prompt, TARGETS, [], selection, Budgets())
