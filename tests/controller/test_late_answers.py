"""A budget plans; it does not turn a late answer into none. The dispatcher driven step by
step: a job may run until its prompt's own deadline whatever the delay budget; an answer that
comes after its category's delay budget, or spends more than the energy budget, is given,
marked with the budgets it ran over, with an event; jobs cut without a result (left out by an
early answer, or at the deadline) reach the observer as censored samples."""

from __future__ import annotations

import math

import pytest

from controller.aggregate import over_budget
from controller.dispatch import Dispatcher, Pair, Route
from controller.ledger import Entry, ReplyRoute
from messages.budgets import Budgets
from messages.prompts import Prompt
from messages.results import EnergyReading, JobResult, LatencyBreakdown

BUDGETS = Budgets(energy_j=1.0, delay_s={"geo": 0.5})


class Observer:
    """What the live-cost loop hears from the dispatcher."""

    def __init__(self) -> None:
        self.results: list[tuple[str, float]] = []
        self.cuts: list[tuple[Pair, str | None, float]] = []
        self.overruns: list[float] = []

    def on_job_result(
        self, result: JobResult, category: str | None, round_trip_s: float, now: float
    ) -> None:
        self.results.append((result.agent_id, round_trip_s))

    def claim(self, result: JobResult, now: float) -> bool:
        return False

    def on_job_cut(self, pair: Pair, category: str | None, elapsed_s: float, now: float) -> None:
        self.cuts.append((pair, category, elapsed_s))

    def on_over_budget(self, now: float) -> None:
        self.overruns.append(now)


def make(
    observer: Observer, targets: list[tuple[str, str]], weights: dict[str, float]
) -> Dispatcher:
    def router(prompt: Prompt, load: dict[str, int]) -> Route:
        return Route([Pair(*t) for t in targets], [], dict(weights), BUDGETS)

    return Dispatcher(router, lambda e: [], lambda a: 4, 10, observer=observer)


def entry(rid: str, timeout_s: float = 30.0, category: str | None = "geo") -> Entry:
    prompt = Prompt(
        prompt="The capital of France is",
        choices=["Paris", "Rome"],
        request_id=rid,
        timeout_s=timeout_s,
        category=category,
    )
    return Entry(rid, prompt, [ReplyRoute("inbox/x")], received_s=1000.0, fingerprint=rid)


def result(agent: str, rid: str, probs: list[float], energy_j: float = 0.4) -> JobResult:
    return JobResult(
        request_id=rid,
        expert_id="e",
        agent_id=agent,
        ok=True,
        choice_probs=probs,
        choice_logprobs=[math.log(p) for p in probs],
        latency=LatencyBreakdown(queue_s=0, load_s=0, total_s=0.1),
        energy=EnergyReading(energy_j=energy_j, source="estimate", estimated=True),
    )


def test_a_late_answer_is_an_answer_marked_late_with_an_event() -> None:
    seen = Observer()
    d = make(seen, [("a1", "e")], {"e@a1": 1.0})
    ((_, job),) = d.admit(entry("r1", timeout_s=30.0), 0.0, 1000.0).jobs
    assert job.timeout_s > 20  # the job has the prompt's deadline, not the 0.5 s budget
    assert not d.tick(5.0).answers  # long past the delay budget: still waiting
    actions, _ = d.on_result(result("a1", "r1", [0.9, 0.1]), 6.0)
    ((answer, _),) = actions.answers
    assert answer.status == "ok" and answer.answer == "Paris"
    ((late,),) = [answer.over_budget]
    assert late.budget == "delay" and late.category == "geo" and late.limit == 0.5
    assert late.spent == pytest.approx(6.0) and "late" in late.reason
    assert [e["kind"] for e in actions.events] == ["over_budget"]
    assert seen.overruns == [6.0]


def test_an_answer_within_its_budgets_is_not_marked() -> None:
    seen = Observer()
    d = make(seen, [("a1", "e")], {"e@a1": 1.0})
    d.admit(entry("r1"), 0.0, 1000.0)
    actions, _ = d.on_result(result("a1", "r1", [0.9, 0.1]), 0.3)
    ((answer, _),) = actions.answers
    assert answer.over_budget == [] and not actions.events and seen.overruns == []


def test_energy_over_the_budget_is_said() -> None:
    seen = Observer()
    d = make(seen, [("a1", "e"), ("a2", "e")], {"e@a1": 0.5, "e@a2": 0.5})
    d.admit(entry("r1"), 0.0, 1000.0)
    d.on_result(result("a1", "r1", [0.6, 0.4], energy_j=0.7), 0.2)
    actions, _ = d.on_result(result("a2", "r1", [0.6, 0.4], energy_j=0.7), 0.3)
    ((answer, _),) = actions.answers
    assert [o.budget for o in answer.over_budget] == ["energy"]
    assert answer.over_budget[0].spent == pytest.approx(1.4)


def test_a_job_left_out_by_an_early_answer_is_a_censored_sample() -> None:
    seen = Observer()
    d = make(seen, [("a1", "e"), ("a2", "e")], {"e@a1": 0.9, "e@a2": 0.1})
    d.admit(entry("r1"), 0.0, 1000.0)
    actions, _ = d.on_result(result("a1", "r1", [0.95, 0.05]), 0.25)  # decided without a2
    ((answer, _),) = actions.answers
    assert [f.agent_id for f in answer.left_out] == ["a2"]
    assert seen.cuts == [(Pair("a2", "e"), "geo", 0.25)]
    assert [a for a, _ in actions.cancels] == ["a2"]


def test_jobs_cut_at_the_prompts_deadline_are_censored_samples_and_what_came_is_answered() -> None:
    seen = Observer()
    d = make(seen, [("a1", "e"), ("a2", "e")], {"e@a1": 0.5, "e@a2": 0.5})
    d.admit(entry("r1", timeout_s=10.0), 0.0, 1000.0)
    d.on_result(result("a1", "r1", [0.6, 0.4]), 0.2)  # not decided: a2 could still turn it
    ((answer, _),) = d.tick(10.0).answers
    assert answer.status == "partial" and answer.answer == "Paris"  # what came, not none
    assert seen.cuts == [(Pair("a2", "e"), "geo", 10.0)]
    assert [o.budget for o in answer.over_budget] == ["delay"]


def test_the_late_decision_reads_the_prompts_category_and_the_energy_it_has() -> None:
    assert over_budget(None, "geo", 9.0, 9.0) == []
    assert over_budget(BUDGETS, None, 9.0, None) == []  # no category: no delay budget to read
    assert over_budget(BUDGETS, "math", 9.0, None) == []  # no budget for math
    assert [o.budget for o in over_budget(BUDGETS, "geo", 0.6, 1.5)] == ["delay", "energy"]
    assert over_budget(BUDGETS, "geo", 0.5, 1.0) == []  # at the budget is within it
