"""The pure decisions: when an answer is decided, and which replica takes a job."""

from __future__ import annotations

from controller.aggregate import decided
from controller.decisions import fleet_coming_back, least_loaded, one_replica_each
from messages.results import JobResult, LatencyBreakdown


def result(expert: str, agent: str, **fields: object) -> JobResult:
    if "choice_probs" in fields:
        fields["choice_logprobs"] = [0.0] * len(fields["choice_probs"])  # type: ignore[arg-type]
    return JobResult(
        request_id="r",
        expert_id=expert,
        agent_id=agent,
        ok=fields.pop("ok", True),  # type: ignore[arg-type]
        latency=LatencyBreakdown(queue_s=0, load_s=0, total_s=0.1),
        **fields,  # type: ignore[arg-type]
    )


CHOICES = ["A", "B"]


def test_nothing_out_is_decided() -> None:
    assert decided(CHOICES, {}, [], None)


def test_a_choice_is_decided_only_when_the_lead_beats_the_weight_still_out() -> None:
    sure = {"e1@a1": result("e1", "a1", choice_probs=[1.0, 0.0])}
    # Equal weights: 0.5 lead against 0.5 out could still be tied: not decided.
    assert not decided(CHOICES, sure, ["e2@a2"], None)
    # The gate trusts e1 with 0.8: lead 0.8 > 0.2 out.
    assert decided(CHOICES, sure, ["e2@a2"], {"e1@a1": 0.8, "e2@a2": 0.2})
    # A lead of 0.6 * 0.7 = 0.42 is not more than 0.3 out... but 0.7 * 0.6 = 0.42 > 0.3 is.
    close = {"e1@a1": result("e1", "a1", choice_probs=[0.8, 0.2])}
    assert decided(CHOICES, close, ["e2@a2"], {"e1@a1": 0.7, "e2@a2": 0.3})
    assert not decided(CHOICES, close, ["e2@a2"], {"e1@a1": 0.5, "e2@a2": 0.5})


def test_failed_and_malformed_results_decide_nothing() -> None:
    failed = {"e1@a1": result("e1", "a1", ok=False, error="oom")}
    assert not decided(CHOICES, failed, ["e2@a2"], {"e1@a1": 0.99, "e2@a2": 0.01})
    short = {"e1@a1": result("e1", "a1", choice_probs=[1.0, 0.0, 0.0])}
    assert not decided(CHOICES, short, ["e2@a2"], {"e1@a1": 0.99, "e2@a2": 0.01})


def test_free_text_is_decided_when_the_heaviest_text_has_come() -> None:
    text = {"e1@a1": result("e1", "a1", text="Tokyo")}
    assert decided(None, text, ["e2@a2"], None)  # equal weights: the earliest wins the tie
    assert not decided(None, text, ["e2@a2"], {"e1@a1": 0.4, "e2@a2": 0.6})
    assert decided(None, text, ["e2@a2"], {"e1@a1": 0.6, "e2@a2": 0.4})
    empty = {"e1@a1": result("e1", "a1", text="  ")}
    assert not decided(None, empty, ["e2@a2"], None)  # an empty text never wins


def test_replicas_share_the_load() -> None:
    assert least_loaded(["b", "a"], {}) == "a"
    assert least_loaded(["a", "b"], {"a": 2, "b": 1}) == "b"
    assert least_loaded([], {}) is None
    active = [("a1", "smol"), ("a2", "smol"), ("a2", "gemma")]
    assert one_replica_each(active, {"a1": 3}) == [("a2", "gemma"), ("a2", "smol")]
    assert one_replica_each(active, {"a2": 3}) == [("a2", "gemma"), ("a1", "smol")]


def test_a_fleet_is_coming_back_only_when_it_had_agents_and_lost_them_lately() -> None:
    # Every agent's will came 2 s ago (a broker restart): wait for them.
    assert fleet_coming_back([False, False], [98.0, 97.0], 50.0, now=100.0, window_s=10.0)
    # The controller reconnected 1 s ago; the agents' last words are old but may be re-announced.
    assert fleet_coming_back([False], [10.0], 99.0, now=100.0, window_s=10.0)
    # Gone for longer than the window, or never had an agent, or one is online: no waiting.
    assert not fleet_coming_back([False], [80.0], 50.0, now=100.0, window_s=10.0)
    assert not fleet_coming_back([], [], 99.0, now=100.0, window_s=10.0)
    assert not fleet_coming_back([True, False], [99.0, 99.0], 99.0, now=100.0, window_s=10.0)
    assert not fleet_coming_back([False], [80.0], None, now=100.0, window_s=10.0)
