"""combine(): the mixture of choice distributions and the choice of a free-text answer."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from controller.aggregate import (
    Arrival,
    Combined,
    combine,
    normalised_weights,
    total_energy,
    uniform_weights,
)
from messages import (
    Answer,
    EnergyReading,
    ExpertFailure,
    JobResult,
    LatencyBreakdown,
    decode,
    encode,
)
from messages.base import MAX_ENERGY_J, MAX_SECONDS, MAX_TOKENS, MAX_TOTAL_ENERGY_J

CHOICES = ["Mars", "Jupiter", "Venus"]


def result(
    expert_id: str,
    agent_id: str,
    *,
    ok: bool = True,
    text: str | None = None,
    probs: list[float] | None = None,
    error: str | None = None,
    energy_j: float | None = None,
    total_s: float = 1.0,
    completion_tokens: int = 0,
) -> JobResult:
    return JobResult(
        request_id="r-1",
        expert_id=expert_id,
        agent_id=agent_id,
        ok=ok,
        error=error,
        text=text,
        choice_probs=probs,
        choice_logprobs=[math.log(p) if p > 0 else -1e9 for p in probs] if probs else None,
        completion_tokens=completion_tokens,
        latency=LatencyBreakdown(queue_s=0.0, load_s=0.0, total_s=total_s),
        energy=EnergyReading(energy_j=energy_j, source="nvml", estimated=False)
        if energy_j is not None
        else None,
    )


def arrive(res: JobResult, latency_s: float = 1.0) -> Arrival:
    return Arrival(res, latency_s)


def weights_of(combined: Combined) -> dict[str, float]:
    return {f"{o.expert_id}@{o.agent_id}": o.weight for o in combined.experts}


def failures_of(combined: Combined) -> list[tuple[str, str, str]]:
    return [(f.expert_id, f.agent_id, f.reason) for f in combined.failed]


def test_uniform_weights() -> None:
    assert uniform_weights(["a", "b", "c", "d"]) == {"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}
    assert uniform_weights([]) == {}


def test_mixture_with_uniform_weights() -> None:
    combined = combine(
        CHOICES,
        [
            arrive(result("smol", "orin-1", probs=[0.6, 0.3, 0.1])),
            arrive(result("gemma", "pi-5", probs=[0.2, 0.7, 0.1])),
        ],
        [],
    )
    assert combined.choice_probs == pytest.approx([0.4, 0.5, 0.1])
    assert combined.choice_index == 1
    assert combined.answer == "Jupiter"
    assert weights_of(combined) == {"smol@orin-1": 0.5, "gemma@pi-5": 0.5}
    assert combined.failed == []


def test_mixture_of_three_experts() -> None:
    combined = combine(
        ["A", "B"],
        [
            arrive(result("e1", "a", probs=[0.9, 0.1])),
            arrive(result("e2", "a", probs=[0.3, 0.7])),
            arrive(result("e3", "b", probs=[0.6, 0.4])),
        ],
        [],
    )
    assert combined.choice_probs == pytest.approx([0.6, 0.4])
    assert combined.choice_index == 0
    assert combined.answer == "A"
    assert all(w == pytest.approx(1 / 3) for w in weights_of(combined).values())


def test_exact_tie_goes_to_the_first_choice() -> None:
    combined = combine(
        ["A", "B"],
        [
            arrive(result("e1", "a", probs=[0.75, 0.25])),
            arrive(result("e2", "b", probs=[0.25, 0.75])),
        ],
        [],
    )
    assert combined.choice_probs == [0.5, 0.5]
    assert combined.choice_index == 0
    assert combined.answer == "A"


def test_a_single_expert_distribution_passes_through() -> None:
    combined = combine(["A", "B"], [arrive(result("e", "a", probs=[0.25, 0.75]))], [])
    assert combined.choice_probs == pytest.approx([0.25, 0.75])
    assert sum(combined.choice_probs or []) == pytest.approx(1.0)
    assert combined.answer == "B"


def test_explicit_weights_are_renormalised_over_successful_experts() -> None:
    combined = combine(
        CHOICES,
        [
            arrive(result("smol", "orin-1", probs=[1.0, 0.0, 0.0])),
            arrive(result("gemma", "pi-5", probs=[0.0, 1.0, 0.0])),
            arrive(result("big", "gpu-1", ok=False, error="out of memory")),
        ],
        [],
        weights={"smol@orin-1": 3.0, "gemma@pi-5": 1.0, "big@gpu-1": 4.0},
    )
    assert weights_of(combined) == pytest.approx({"smol@orin-1": 0.75, "gemma@pi-5": 0.25})
    assert combined.choice_probs == pytest.approx([0.75, 0.25, 0.0])
    assert combined.answer == "Mars"
    assert failures_of(combined) == [("big", "gpu-1", "out of memory")]


def test_weights_can_outvote_the_majority() -> None:
    arrivals = [
        arrive(result("a", "x", probs=[0.9, 0.1])),
        arrive(result("b", "x", probs=[0.9, 0.1])),
        arrive(result("c", "y", probs=[0.0, 1.0])),
    ]
    assert combine(["A", "B"], arrivals, []).answer == "A"
    weighted = combine(["A", "B"], arrivals, [], weights={"a@x": 1, "b@x": 1, "c@y": 8})
    assert weighted.choice_probs == pytest.approx([0.18, 0.82])
    assert weighted.answer == "B"


def test_expert_missing_from_weights_gets_zero_weight() -> None:
    combined = combine(
        ["A", "B"],
        [arrive(result("a", "x", probs=[1.0, 0.0])), arrive(result("b", "x", probs=[0.0, 1.0]))],
        [],
        weights={"b@x": 2.0},
    )
    assert weights_of(combined) == {"a@x": 0.0, "b@x": 1.0}
    assert combined.answer == "B"


def test_weights_summing_to_zero_fall_back_to_uniform() -> None:
    combined = combine(
        ["A", "B"],
        [arrive(result("a", "x", probs=[1.0, 0.0])), arrive(result("b", "x", probs=[0.2, 0.8]))],
        [],
        weights={"a@x": 0.0, "b@x": 0.0, "gone@y": 5.0},
    )
    assert weights_of(combined) == {"a@x": 0.5, "b@x": 0.5}
    assert combined.choice_probs == pytest.approx([0.6, 0.4])


def test_failed_and_wrong_length_results_are_left_out_and_listed() -> None:
    missing = [ExpertFailure(expert_id="slow", agent_id="pi-9", reason="no result within 60 s")]
    combined = combine(
        CHOICES,
        [
            arrive(result("smol", "orin-1", probs=[0.1, 0.8, 0.1])),
            arrive(result("bad", "orin-1", ok=False, error="load failed: no such file")),
            arrive(result("short", "pi-5", probs=[0.5, 0.5])),
            arrive(result("long", "pi-5", probs=[0.25, 0.25, 0.25, 0.25])),
            arrive(result("talker", "pi-6", text="Jupiter, clearly")),
        ],
        missing,
    )
    assert [o.expert_id for o in combined.experts] == ["smol"]
    assert combined.experts[0].weight == 1.0
    assert combined.choice_probs == pytest.approx([0.1, 0.8, 0.1])
    assert combined.answer == "Jupiter"
    assert failures_of(combined) == [
        ("slow", "pi-9", "no result within 60 s"),
        ("bad", "orin-1", "load failed: no such file"),
        ("short", "pi-5", "expected 3 choice probabilities"),
        ("long", "pi-5", "expected 3 choice probabilities"),
        ("talker", "pi-6", "expected 3 choice probabilities"),
    ]


def test_missing_list_is_not_mutated() -> None:
    missing = [ExpertFailure(expert_id="slow", agent_id="pi-9", reason="timeout")]
    combine(["A", "B"], [arrive(result("b", "x", ok=False, error="boom"))], missing)
    assert len(missing) == 1


def test_free_text_picks_the_highest_weight() -> None:
    combined = combine(
        None,
        [
            arrive(result("smol", "orin-1", text="Paris"), latency_s=0.5),
            arrive(result("gemma", "pi-5", text="Paris, France"), latency_s=2.0),
        ],
        [],
        weights={"smol@orin-1": 1.0, "gemma@pi-5": 3.0},
    )
    assert combined.answer == "Paris, France"
    assert combined.choice_index is None
    assert combined.choice_probs is None
    assert weights_of(combined) == pytest.approx({"smol@orin-1": 0.25, "gemma@pi-5": 0.75})


def test_free_text_tie_goes_to_the_earliest_arrival() -> None:
    combined = combine(
        None,
        [
            arrive(result("slow", "a", text="slow answer"), latency_s=3.0),
            arrive(result("fast", "b", text="fast answer"), latency_s=0.7),
            arrive(result("mid", "c", text="mid answer"), latency_s=1.1),
        ],
        [],
    )
    assert combined.answer == "fast answer"
    # Outputs keep arrival order; only the answer is chosen.
    assert [o.expert_id for o in combined.experts] == ["slow", "fast", "mid"]


def test_free_text_skips_failed_experts() -> None:
    combined = combine(
        None,
        [
            arrive(result("best", "a", ok=False, error="deadline"), latency_s=0.1),
            arrive(result("other", "b", text="fallback"), latency_s=5.0),
        ],
        [],
        weights={"best@a": 10.0, "other@b": 1.0},
    )
    assert combined.answer == "fallback"
    assert weights_of(combined) == {"other@b": 1.0}
    assert failures_of(combined) == [("best", "a", "deadline")]


def test_expert_outputs_carry_latency_tokens_and_energy() -> None:
    combined = combine(
        None,
        [
            arrive(
                result("e", "a", text="hi", total_s=1.25, completion_tokens=9, energy_j=2.5),
                latency_s=1.75,
            )
        ],
        [],
    )
    (output,) = combined.experts
    assert output.text == "hi"
    assert output.latency_s == 1.75
    assert output.agent_latency_s == 1.25
    assert output.completion_tokens == 9
    assert output.energy_j == 2.5
    assert output.energy_source == "nvml"


def test_energy_summed_when_every_output_has_energy() -> None:
    combined = combine(
        ["A", "B"],
        [
            arrive(result("a", "x", probs=[0.5, 0.5], energy_j=1.5)),
            arrive(result("b", "y", probs=[0.5, 0.5], energy_j=2.25)),
            # A failed expert without energy does not spoil the sum of those that answered.
            arrive(result("c", "z", ok=False, error="boom")),
        ],
        [],
    )
    assert combined.energy_j == pytest.approx(3.75)


def test_energy_is_none_when_any_output_lacks_it() -> None:
    combined = combine(
        ["A", "B"],
        [
            arrive(result("a", "x", probs=[0.5, 0.5], energy_j=1.5)),
            arrive(result("b", "y", probs=[0.5, 0.5])),
        ],
        [],
    )
    assert combined.energy_j is None
    assert [o.energy_j for o in combined.experts] == [1.5, None]


def test_zero_energy_counts_as_reported() -> None:
    combined = combine(None, [arrive(result("a", "x", text="t", energy_j=0.0))], [])
    assert combined.energy_j == 0.0


@pytest.mark.parametrize("choices", [CHOICES, None])
def test_no_successful_output_gives_no_answer(choices: list[str] | None) -> None:
    missing = [ExpertFailure(expert_id="m", agent_id="x", reason="no result within 5 s")]
    combined = combine(
        choices,
        [arrive(result("a", "y", ok=False, error="crash", energy_j=1.0))],
        missing,
    )
    assert combined.answer is None
    assert combined.choice_index is None
    assert combined.choice_probs is None
    assert combined.experts == []
    assert combined.energy_j is None
    assert failures_of(combined) == [("m", "x", "no result within 5 s"), ("a", "y", "crash")]


def test_nothing_arrived_at_all() -> None:
    combined = combine(CHOICES, [], [])
    assert combined == Combined(None, None, None, [], [], None)


def test_choice_probs_that_are_not_a_distribution_never_reach_the_mixture() -> None:
    with pytest.raises(ValidationError, match="sum to 1"):
        result("a", "x", probs=[0.0, 0.0])


def test_an_empty_generation_never_wins_over_a_real_one() -> None:
    empty = arrive(result("a", "x", text=""), latency_s=0.1)
    real = arrive(result("b", "y", text="Tokyo"), latency_s=5.0)
    combined = combine(None, [empty, real], [], weights={"a@x": 0.9, "b@y": 0.1})
    assert combined.answer == "Tokyo"


def test_free_text_result_without_text_is_listed_as_failed() -> None:
    combined = combine(None, [arrive(result("a", "x", probs=[0.5, 0.5]))], [])
    assert combined.experts == []
    assert [f.expert_id for f in combined.failed] == ["a"]


# -- extreme but valid values never stop an answer --------------------------------------------


def answer_of(combined: Combined) -> Answer:
    """The answer the controller builds from a combination; raises if it cannot."""
    status = "ok" if not combined.failed else ("partial" if combined.experts else "failed")
    answer = Answer(
        request_id="r-1",
        status=status,
        answer=combined.answer,
        choice_index=combined.choice_index,
        choice_probs=combined.choice_probs,
        experts=combined.experts,
        failed=combined.failed,
        latency_s=1.0,
        energy_j=combined.energy_j,
    )
    assert decode(Answer, encode(answer)) == answer
    return answer


@pytest.mark.parametrize("choices", [CHOICES, None])
def test_two_results_at_the_largest_energy_still_give_an_answer(choices: list[str] | None) -> None:
    probs = [0.2, 0.5, 0.3] if choices else None
    text = None if choices else "Jupiter"
    combined = combine(
        choices,
        [
            arrive(result("a", "x", probs=probs, text=text, energy_j=MAX_ENERGY_J)),
            arrive(result("b", "y", probs=probs, text=text, energy_j=MAX_ENERGY_J)),
        ],
        [],
    )
    assert combined.energy_j == 2 * MAX_ENERGY_J
    answer = answer_of(combined)
    assert answer.status == "ok"
    assert answer.energy_j == 2 * MAX_ENERGY_J
    assert answer.answer == "Jupiter"


def test_the_energy_sum_is_capped_at_the_answers_bound() -> None:
    arrivals = [arrive(result(f"e{i}", "x", text="t", energy_j=MAX_ENERGY_J)) for i in range(1001)]
    combined = combine(None, arrivals, [])
    assert combined.energy_j == MAX_TOTAL_ENERGY_J
    assert answer_of(combined).energy_j == MAX_TOTAL_ENERGY_J


def test_total_energy() -> None:
    assert total_energy([]) is None
    assert total_energy([1.0, None]) is None
    assert total_energy([0.1] * 10) == 1.0  # fsum: exact where sum() gives 0.9999999999999999
    assert total_energy([1e308, 1e308]) == MAX_TOTAL_ENERGY_J  # never inf


def test_the_largest_latencies_and_token_counts_still_give_an_answer() -> None:
    res = JobResult(
        request_id="r-1",
        expert_id="e",
        agent_id="a",
        ok=True,
        text="t",
        prompt_tokens=MAX_TOKENS,
        completion_tokens=MAX_TOKENS,
        latency=LatencyBreakdown(queue_s=0.0, load_s=MAX_SECONDS, total_s=MAX_SECONDS),
    )
    # The controller's own clock can say anything (a suspended laptop): it is clamped.
    combined = combine(None, [arrive(res, latency_s=1e9)], [])
    (output,) = combined.experts
    assert output.latency_s == MAX_SECONDS
    assert output.compute_s == MAX_SECONDS
    assert answer_of(combined).experts[0].completion_tokens == MAX_TOKENS


@pytest.mark.parametrize(
    "weights",
    [
        {"a@x": math.inf, "b@y": 1.0},
        {"a@x": math.nan, "b@y": math.nan},
        {"a@x": 1e308, "b@y": 1e308},
        {"a@x": -1.0, "b@y": 0.0},
    ],
    ids=["inf", "nan", "overflowing-total", "negative"],
)
def test_weights_that_are_not_finite_and_positive_never_break_the_answer(
    weights: dict[str, float],
) -> None:
    combined = combine(
        CHOICES,
        [
            arrive(result("a", "x", probs=[0.1, 0.8, 0.1])),
            arrive(result("b", "y", probs=[0.1, 0.7, 0.2])),
        ],
        [],
        weights,
    )
    got = weights_of(combined)
    assert all(0.0 <= w <= 1.0 for w in got.values())
    assert math.fsum(got.values()) == pytest.approx(1.0)
    assert answer_of(combined).answer == "Jupiter"


def test_normalised_weights() -> None:
    assert normalised_weights(["a", "b"], {"a": 3.0, "b": 1.0}) == {"a": 0.75, "b": 0.25}
    assert normalised_weights(["a", "b"], {"a": math.inf, "b": 1.0}) == {"a": 0.0, "b": 1.0}
    assert normalised_weights(["a", "b"], {}) == {"a": 0.5, "b": 0.5}
