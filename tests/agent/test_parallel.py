"""Concurrent jobs on one expert: llama.cpp's batched decoding (agent/backends/llama_batch.py)
gives the one-at-a-time path's greedy outputs, and the agent runs ``parallel`` jobs at once and
reports its slots."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.backends.base import Sampling
from agent.backends.llama_cpp import LlamaCppBackend, LlamaOptions
from agent.models import resolve_model
from agent.service import Agent
from agent.settings import AgentSettings
from agent.templates import choice_prompt
from messages import topics
from messages.base import now_s
from messages.bus import Bus
from messages.capabilities import AgentCapabilities
from messages.jobs import Job
from messages.plan import ActivationPlan
from messages.telemetry import Telemetry
from moe2.local.broker import LocalBroker
from tests.helpers import Recorder

PROMPTS = [
    "Name a colour.",
    "Write a haiku about the sea.",
    "What is 2+2?",
    "Tell me a joke.",
    "List three fruits.",
    "Who wrote Hamlet?",
]
CHOICES = [
    ("The capital of France is", ["Berlin", "Paris", "Madrid"]),
    ("2 + 3 =", ["4", "5", "six"]),  # multi-token continuations
    ("The chemical symbol for gold is", ["Au", "Ag", "Fe", "Pb"]),
]


@pytest.fixture(scope="module")
def serial() -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend(resolve_model("smollm2-135m"), LlamaOptions(n_ctx=256))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def batched() -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend(resolve_model("smollm2-135m"), LlamaOptions(n_ctx=256, parallel=4))
    yield backend
    backend.close()


def _at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in threads of their own, all started together; their results in order."""
    out: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []
    gate = threading.Barrier(len(calls))

    def run(i: int) -> None:
        gate.wait()
        try:
            out[i] = calls[i]()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return out


def _fresh(backend: LlamaCppBackend) -> None:
    """Forget the prefix the one-at-a-time context holds (its reuse splits the prompt's decode,
    which moves the last bits of the logits)."""
    backend.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    backend.llm.n_tokens = 0


def test_parallel_generations_match_sequential_ones(
    serial: LlamaCppBackend, batched: LlamaCppBackend
) -> None:
    want = [serial.generate(p, 24, time.monotonic() + 120) for p in PROMPTS]
    # six at once on four slots: four decoded together, two admitted as slots free up
    got = _at_once([lambda p=p: batched.generate(p, 24, time.monotonic() + 120) for p in PROMPTS])
    for w, g in zip(want, got, strict=True):
        assert (g.text, g.completion_tokens, g.finish_reason) == (
            w.text,
            w.completion_tokens,
            w.finish_reason,
        )
        assert g.text and g.prompt_tokens == w.prompt_tokens


def test_parallel_choice_scores_match_sequential_ones(
    serial: LlamaCppBackend, batched: LlamaCppBackend
) -> None:
    rendered = [choice_prompt("cloze", p, None, c) for p, c in CHOICES]
    want = []
    for r in rendered:
        _fresh(serial)
        want.append(serial.score_choices(r.prefix, r.continuations).logprobs)
    got = _at_once([lambda r=r: batched.score_choices(r.prefix, r.continuations) for r in rendered])
    assert [g.logprobs for g in got] == want
    assert got[0].probs.index(max(got[0].probs)) == 1  # Paris


def test_generation_and_scoring_share_the_batch(
    serial: LlamaCppBackend, batched: LlamaCppBackend
) -> None:
    r = choice_prompt("cloze", CHOICES[1][0], None, CHOICES[1][1])
    _fresh(serial)
    want_scores = serial.score_choices(r.prefix, r.continuations).logprobs
    want_text = serial.generate(PROMPTS[1], 16, time.monotonic() + 120).text
    text, scores = _at_once(
        [
            lambda: batched.generate(PROMPTS[1], 16, time.monotonic() + 120).text,
            lambda: batched.score_choices(r.prefix, r.continuations).logprobs,
        ]
    )
    assert (text, scores) == (want_text, want_scores)


def test_seeded_sampling_repeats_and_cancel_stops_one_job_only(batched: LlamaCppBackend) -> None:
    seeded = Sampling(temperature=0.9, top_p=0.95, seed=7)
    cancel = threading.Event()
    cancel.set()
    first, second, cancelled = _at_once(
        [
            lambda: batched.generate(PROMPTS[3], 16, time.monotonic() + 120, sampling=seeded),
            lambda: batched.generate(PROMPTS[3], 16, time.monotonic() + 120, sampling=seeded),
            lambda: batched.generate(PROMPTS[0], 200, time.monotonic() + 120, cancel=cancel),
        ]
    )
    assert first.text == second.text and first.text
    assert cancelled.finish_reason == "deadline" and cancelled.completion_tokens <= 1


def test_streamed_pieces_add_up_to_the_text(batched: LlamaCppBackend) -> None:
    pieces: list[list[str]] = [[], []]
    gens = _at_once(
        [
            lambda i=i: batched.generate(
                PROMPTS[i], 20, time.monotonic() + 120, on_text=pieces[i].append
            )
            for i in range(2)
        ]
    )
    for gen, got in zip(gens, pieces, strict=True):
        assert "".join(got) == gen.text and len(got) > 1


# -- the agent ----------------------------------------------------------------------------

FLEET = "parallel-test"


def _job(request_id: str, prompt: str, max_tokens: int = 24) -> Job:
    return Job(
        request_id=request_id,
        expert_id="smollm2",
        prompt=prompt,
        max_tokens=max_tokens,
        timeout_s=120.0,
        issued_s=now_s(),
    )


def test_agent_runs_parallel_jobs_and_reports_its_slots(
    mosquitto: LocalBroker, serial: LlamaCppBackend
) -> None:
    settings = AgentSettings.load(
        None,
        broker=mosquitto.url,
        fleet=FLEET,
        agent_id="par",
        experts=[{"id": "smollm2", "model": "smollm2-135m", "n_ctx": 256, "parallel": 3}],
        telemetry_interval_s=0.1,
        job_queue_capacity=8,
    )
    agent = Agent(settings)
    rec = Recorder(mosquitto.endpoint, FLEET)
    for topic in (topics.AGENT_RESULTS, topics.AGENT_TELEMETRY, topics.AGENT_CAPABILITIES):
        rec.watch(topic, agent_id="par")
    bus = Bus(mosquitto.endpoint, FLEET, client_id=f"par-{time.monotonic_ns()}")
    try:
        with rec:
            agent.start()
            bus.connect()
            plan = ActivationPlan(agent_id="par", epoch=1, experts=["smollm2"], time_s=now_s())
            bus.publish(topics.AGENT_PLAN, plan, agent_id="par")
            rec.wait_for_a(Telemetry, lambda t: t.loaded_experts == ["smollm2"], 60)
            caps = rec.wait_for_a(AgentCapabilities, lambda c: bool(c.experts[0].memory_bytes), 30)
            assert caps.experts[0].parallel == 3
            for i, p in enumerate(PROMPTS):
                bus.publish(topics.AGENT_JOBS, _job(f"p-{i}", p), agent_id="par")
            results = [rec.wait_for_result(f"p-{i}", 120) for i in range(len(PROMPTS))]
            busy = [
                (t.slots_busy, t.slots_total, t.queue_depth, t.expert_slots_busy)
                for t in rec.messages(Telemetry)
                if t.loaded_experts == ["smollm2"]
            ]
    finally:
        bus.clear_retained(topics.AGENT_PLAN, agent_id="par")
        bus.close()
        agent.stop()
    for p, result in zip(PROMPTS, results, strict=True):
        want = serial.generate(p, 24, time.monotonic() + 120)
        assert result.ok and result.text == want.text
    assert all(total == 3 for _, total, _, _ in busy)
    assert max(b for b, _, _, _ in busy) == 3  # three ran at once, never more
    assert any(b == 3 and depth > 0 and per == {"smollm2": 3} for b, _, depth, per in busy)


def test_closing_the_backend_answers_every_caller() -> None:
    """Jobs running and jobs waiting for a slot all return or raise when the expert is
    unloaded under them; none waits forever."""
    backend = LlamaCppBackend(resolve_model("smollm2-135m"), LlamaOptions(n_ctx=256, parallel=2))
    outcomes: list[str] = []
    started = threading.Event()

    def job(i: int) -> None:
        def piece(text: str) -> None:
            started.set()

        try:
            backend.generate(PROMPTS[i], 200, time.monotonic() + 300, on_text=piece)
            outcomes.append("returned")
        except RuntimeError:
            outcomes.append("raised")

    threads = [threading.Thread(target=job, args=(i,)) for i in range(4)]  # two wait for a slot
    for t in threads:
        t.start()
    assert started.wait(60)
    assert backend._batched is not None
    backend._batched.close()  # the batched context goes; the model stays until the jobs end
    for t in threads:
        t.join(30)
    backend.close()
    assert not any(t.is_alive() for t in threads) and len(outcomes) == 4
