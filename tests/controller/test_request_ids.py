"""Request ids and the jobs made under them, decided without I/O: a login's ids are scoped by
the login, a job's digest says what it is, the ledger knows which prompt an id names, and the
dispatcher takes no result made for another job under the same id. The same on real processes
is in tests/moe2/test_request_ids.py and tests/firmware_setup/test_request_ids_secure.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from controller.dispatch import Dispatcher, Route
from controller.ledger import Entry, Ledger, ReplyRoute
from controller.request_ids import scoped_id
from messages.answers import Answer
from messages.base import TOPIC_LEVEL_RE, now_s
from messages.jobs import Job
from messages.prompts import Prompt
from messages.results import JobResult, LatencyBreakdown


def _job(**kw: object) -> Job:
    fields: dict[str, object] = dict(
        request_id="q1",
        expert_id="smol",
        prompt="The capital of Japan is",
        choices=["Lima", "Tokyo"],
        timeout_s=30.0,
        issued_s=now_s(),
    )
    fields.update(kw)
    return Job(**fields)  # type: ignore[arg-type]


def test_a_logins_ids_are_its_own_and_stay_one_topic_level() -> None:
    assert scoped_id(None, "q1") == "q1"  # the shared topics keep the id as sent
    assert scoped_id("c1", "q1") == "c1:q1" != scoped_id("c2", "q1")
    long_id = "x" * 128
    keys = {scoped_id(login, rid) for login in ("c1", "c2", "l" * 128) for rid in (long_id, "q")}
    assert len(keys) == 6
    assert all(TOPIC_LEVEL_RE.fullmatch(k) for k in keys)
    assert scoped_id("c1", long_id) == scoped_id("c1", long_id)  # stable: a re-send joins


def test_a_jobs_digest_is_what_it_is_not_when_it_was_sent() -> None:
    first = _job()
    resent = _job(issued_s=now_s() + 5, timeout_s=12.0, stream=False)
    assert first.digest() == resent.digest() and len(first.digest()) == 32
    others = [
        _job(prompt="The capital of France is", choices=["Paris", "Rome"]),
        _job(choices=["Tokyo", "Lima"]),
        _job(expert_id="gemma"),
        _job(request_id="q2"),
        _job(choices=None, max_tokens=8),
        _job(choices=None, temperature=0.7, seed=1),
        _job(choices=None, temperature=0.7, seed=2),
        _job(choices=None, stop=["\n"]),
    ]
    assert len({first.digest(), *(o.digest() for o in others)}) == len(others) + 1


def test_a_result_carries_a_digest_or_none_and_nothing_else() -> None:
    latency = LatencyBreakdown(queue_s=0, load_s=0, total_s=0)
    fields = dict(request_id="q1", expert_id="smol", agent_id="a1", ok=True, text="x")
    assert JobResult(**fields, latency=latency).job_digest is None  # an agent before this field
    digest = _job().digest()
    assert JobResult(**fields, latency=latency, job_digest=digest).job_digest == digest
    for bad in ("", "X" * 32, "0" * 31, "0" * 33, "../" * 11):
        with pytest.raises(ValidationError):
            JobResult(**fields, latency=latency, job_digest=bad)


def _dispatcher() -> Dispatcher:
    def router(prompt: Prompt, load: dict[str, int]) -> Route:
        return Route([("a1", "smol")], [], None, None)

    return Dispatcher(router, lambda expert: ["a1"], lambda agent: 4, 10)


def _result(job: Job, probs: list[float], digest: str | None) -> JobResult:
    logprobs = [-0.1 if p > 0.5 else -2.3 for p in probs]
    return JobResult(
        request_id=job.request_id,
        expert_id=job.expert_id,
        agent_id="a1",
        ok=True,
        choice_probs=probs,
        choice_logprobs=logprobs,
        finish_reason="scored",
        latency=LatencyBreakdown(queue_s=0, load_s=0, total_s=0.1),
        job_digest=digest,
    )


def test_a_result_made_for_another_job_under_the_same_id_is_refused() -> None:
    d = _dispatcher()
    prompt = Prompt(prompt="The capital of France is", choices=["Paris", "Rome"], request_id="q1")
    entry = Entry("q1", prompt, [ReplyRoute("inbox/x")], received_s=now_s(), fingerprint="f")
    actions = d.admit(entry, 0.0, now_s())
    [(agent, job)] = actions.jobs
    # The agent's result for "Japan" under q1 (a job of an earlier prompt with that id).
    stale = _job(issued_s=job.issued_s)
    actions, refusal = d.on_result(_result(job, [0.03, 0.97], stale.digest()), 0.5)
    assert refusal is not None and "another job" in refusal and not actions.answers
    actions, refusal = d.on_result(_result(job, [0.99, 0.01], job.digest()), 0.6)
    assert refusal is None
    [(answer, _)] = actions.answers
    assert answer.status == "ok" and answer.answer == "Paris"


def test_a_result_without_a_digest_is_taken_as_before() -> None:
    d = _dispatcher()
    prompt = Prompt(prompt="The capital of France is", choices=["Paris", "Rome"], request_id="q1")
    entry = Entry("q1", prompt, [], received_s=now_s(), fingerprint="f")
    [(_, job)] = d.admit(entry, 0.0, now_s()).jobs
    actions, refusal = d.on_result(_result(job, [0.99, 0.01], None), 0.5)
    assert refusal is None and actions.answers[0][0].answer == "Paris"


def test_the_ledger_says_which_prompt_an_id_names(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    assert ledger.bound("q1") is None
    route = ReplyRoute("moe2/f/replies/c1/q1", b"corr", request_id="q1")
    prompt = Prompt(prompt="q", request_id="c1:q1")
    ledger.add(Entry("c1:q1", prompt, [route], received_s=now_s(), fingerprint="japan"))
    assert ledger.bound("c1:q1") == ("japan", "in flight")
    ledger.close()
    again = Ledger(tmp_path / "ledger.jsonl")  # the asker's id survives a restart
    assert again.entries["c1:q1"].routes == [route]
    answer = Answer(request_id="c1:q1", status="ok", answer="Tokyo", experts=[], latency_s=0.1)
    again.done("c1:q1", answer)
    assert again.bound("c1:q1") == ("japan", "answered")
    assert again.answered("c1:q1", "japan") == answer and again.answered("c1:q1", "x") is None
    assert again.bound("q1") is None
    again.close()


def test_a_journal_written_before_routes_carried_the_askers_id_still_loads(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.jsonl"
    line = {
        "op": "add",
        "request_id": "q1",
        "prompt": Prompt(prompt="q", request_id="q1").model_dump_json(),
        "routes": [{"topic": "inbox/x", "correlation_data": None}],
        "received_s": now_s(),
        "fingerprint": "f",
    }
    path.write_text(json.dumps(line) + "\n")
    ledger = Ledger(path)
    assert ledger.entries["q1"].routes == [ReplyRoute("inbox/x")]
    ledger.close()
