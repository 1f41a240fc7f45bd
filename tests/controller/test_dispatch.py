"""The dispatcher driven step by step: queue and room, early answers, failover, deadlines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.dispatch import PARK_GRACE_S, Dispatcher, Refused, Route
from controller.ledger import Entry, Ledger, ReplyRoute
from messages.answers import Answer
from messages.prompts import Prompt
from messages.results import JobResult, LatencyBreakdown

ACTIVE = [("a1", "smol"), ("a2", "smol")]  # two replicas of one expert


def make(max_queued: int = 10, capacity: int = 1) -> Dispatcher:
    def router(prompt: Prompt, load: dict[str, int]) -> Route:
        agent = min(("a1", "a2"), key=lambda a: (load.get(a, 0), a))
        return Route([(agent, "smol")], [], None, None)

    def replicas(expert: str) -> list[str]:
        return [a for a, e in ACTIVE if e == expert]

    return Dispatcher(router, replicas, lambda agent: capacity, max_queued, retry_after_s=3.0)


def entry(rid: str, timeout_s: float = 10.0) -> Entry:
    prompt = Prompt(prompt="q", request_id=rid, timeout_s=timeout_s)
    return Entry(rid, prompt, [ReplyRoute("inbox/x")], received_s=1000.0, fingerprint=rid)


def done(job_agent: str, rid: str, text: str = "t") -> JobResult:
    return JobResult(
        request_id=rid,
        expert_id="smol",
        agent_id=job_agent,
        ok=True,
        text=text,
        latency=LatencyBreakdown(queue_s=0, load_s=0, total_s=0.1),
    )


def test_jobs_go_only_where_there_is_room_and_the_rest_wait_oldest_first() -> None:
    d = make(capacity=1)
    sent = [d.admit(entry(r), 0.0, 1000.0).jobs for r in ("r1", "r2", "r3")]
    assert [[(a, j.request_id) for a, j in s] for s in sent] == [[("a1", "r1")], [("a2", "r2")], []]
    assert d.counts() == (1, 2)
    actions, refusal = d.on_result(done("a1", "r1"), 0.5)
    assert refusal is None
    assert [a.request_id for a, _ in actions.answers] == ["r1"]
    assert [(a, j.request_id) for a, j in actions.jobs] == [("a1", "r3")]  # r3 takes the slot


def test_beyond_the_queue_bound_a_prompt_is_answered_busy_at_once() -> None:
    d = make(max_queued=1, capacity=1)
    for r in ("r1", "r2", "r3"):
        d.admit(entry(r), 0.0, 1000.0)
    actions = d.admit(entry("r4"), 0.0, 1000.0)
    ((answer, routes),) = actions.answers
    assert answer.status == "busy" and answer.retry_after_s == 3.0 and routes[0].topic == "inbox/x"


def test_a_dead_agents_job_fails_over_to_the_other_replica() -> None:
    d = make(capacity=4)
    d.admit(entry("r1"), 0.0, 1000.0)
    actions = d.on_agent_down("a1", "agent a1 went offline", 1.0)
    assert [(a, j.request_id) for a, j in actions.jobs] == [("a2", "r1")]
    assert actions.events[0]["kind"] == "failover"
    late, _ = d.on_result(done("a1", "r1"), 1.5)  # the dead one's answer after all: late
    assert not late.answers and d.late_results == 1
    actions, _ = d.on_result(done("a2", "r1"), 2.0)
    answer: Answer = actions.answers[0][0]
    assert answer.status == "ok" and answer.experts[0].agent_id == "a2"


def test_without_a_replica_the_answer_comes_once_the_grace_is_over() -> None:
    global ACTIVE
    saved, ACTIVE = ACTIVE, [("a1", "smol")]
    try:
        d = make(capacity=4)
        d.admit(entry("r1", timeout_s=60.0), 0.0, 1000.0)
        ACTIVE = []  # a1 is offline, and it was the only replica
        assert not d.on_agent_down("a1", "agent a1 went offline", 1.0).answers
        assert not d.tick(1.0 + PARK_GRACE_S / 2).answers  # it may be back in a moment
        answer = d.tick(1.0 + PARK_GRACE_S).answers[0][0]  # gone for good: answered without it
        assert answer.status == "failed" and "went offline" in answer.failed[0].reason
    finally:
        ACTIVE = saved


def test_deadlines_answer_pending_and_queued_prompts_and_cancel_the_jobs() -> None:
    d = make(capacity=1)
    d.admit(entry("r1", timeout_s=2.0), 0.0, 1000.0)
    d.admit(entry("r2", timeout_s=2.0), 0.0, 1000.0)
    d.admit(entry("r3", timeout_s=2.0), 0.0, 1000.0)
    actions = d.tick(2.5)
    statuses = sorted((a.request_id, a.status) for a, _ in actions.answers)
    assert statuses == [("r1", "failed"), ("r2", "failed"), ("r3", "failed")]
    assert sorted(c.request_id for _, c in actions.cancels) == ["r1", "r2"]
    assert d.counts() == (0, 0) and d.load == {"a1": 0, "a2": 0}


def test_the_deadline_counts_from_the_first_receipt(tmp_path: Path) -> None:
    # A prompt taken over from the ledger 8 s after it arrived has 2 s of its 10 left.
    d = make(capacity=1)
    ((agent, job),) = d.admit(entry("r1", timeout_s=10.0), 100.0, 1008.0).jobs
    assert job.timeout_s < 2.0
    assert d.tick(102.1).answers[0][0].status == "failed"


def test_the_ledger_survives_a_restart_and_remembers_answers(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.add(entry("r1"))
    ledger.add(entry("r2"))
    answer = Answer(request_id="r1", status="ok", answer="x", experts=[], latency_s=0.1)
    ledger.done("r1", answer)
    assert ledger.answered("r1", "r1") == answer and ledger.answered("r1", "other") is None
    ledger.close()
    path.write_text(path.read_text() + "{not json\n")  # a torn last line is skipped
    again = Ledger(path)
    assert list(again.entries) == ["r2"] and again.entries["r2"].routes == [ReplyRoute("inbox/x")]
    again.close()
    assert len(path.read_text().splitlines()) == 2  # compacted at start: its opening line, r2


def test_the_ledger_stays_small_when_left_running(tmp_path: Path) -> None:
    import controller.ledger as ledger_module

    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    old, ledger_module.COMPACT_LINES = ledger_module.COMPACT_LINES, 50
    try:
        for n in range(200):
            ledger.add(entry(f"r{n}"))
            if n != 7:
                ledger.done(f"r{n}")
        assert len(path.read_text().splitlines()) <= 50 + 2
    finally:
        ledger_module.COMPACT_LINES = old
        ledger.close()
    assert list(Ledger(path).entries) == ["r7"]


def test_a_compacted_ledger_is_on_disk_before_it_replaces_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut right after the rename must find the open prompts: the rewritten file is
    fsynced before os.replace, and the folder after it."""
    import controller.ledger as ledger_module

    path = tmp_path / "ledger.jsonl"
    Ledger(path).add(entry("r1"))
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        calls.append(("replace", str(src)))
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(ledger_module.os, "fsync", fsync)
    monkeypatch.setattr(ledger_module.os, "replace", replace)
    again = Ledger(path)  # compacts at start
    again.close()
    tmp = str(path.with_suffix(".tmp"))
    assert calls == [("fsync", tmp), ("replace", tmp), ("fsync", str(tmp_path))]
    assert list(Ledger(path).entries) == ["r1"]


@pytest.mark.parametrize("sync", [True, False])
def test_with_sync_each_accepted_prompt_is_on_disk_before_it_is_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: bool
) -> None:
    import controller.ledger as ledger_module

    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path, sync=sync)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(ledger_module.os, "fsync", fsync)
    ledger.add(entry("r1"))
    assert synced == ([str(path)] if sync else [])
    ledger.done("r1")  # a lost "done" only answers twice: flushed, not synced
    assert synced == ([str(path)] if sync else [])
    ledger.close()


def test_with_every_replica_gone_the_job_waits_for_one_to_come_back() -> None:
    # A broker going down publishes every agent's will at once: rather than answer "failed"
    # with nothing to say, the prompt waits (within its deadline) for a replica to return.
    global ACTIVE
    saved = ACTIVE
    try:
        d = make(capacity=4)
        d.admit(entry("r1", timeout_s=30.0), 0.0, 1000.0)
        ACTIVE = []
        assert not d.on_agent_down("a1", "agent a1 went offline (connection lost)", 1.0).answers
        assert not d.tick(2.0).answers and d.counts() == (0, 1)
        ACTIVE = [("a1", "smol")]  # back after the broker's restart
        resent = d.tick(3.0)
        assert [(a, j.request_id) for a, j in resent.jobs] == [("a1", "r1")]
        actions, _ = d.on_result(done("a1", "r1"), 3.5)
        assert actions.answers[0][0].status == "ok"
        # And when none comes back, the deadline answers it, naming why.
        d.admit(entry("r2", timeout_s=5.0), 10.0, 1000.0)
        ACTIVE = []
        d.on_agent_down("a1", "agent a1 went offline (connection lost)", 11.0)
        answer = d.tick(15.5).answers[0][0]
        assert answer.status == "failed" and "no replica could take it" in answer.failed[0].reason
    finally:
        ACTIVE = saved


def test_failover_waits_for_a_free_slot_and_goes_before_the_queue() -> None:
    # The controller never sends a job to a full expert, a failed-over one included: with the
    # other replica's slot taken, the job waits for it, ahead of the prompts queued after it.
    online = {"a1", "a2"}

    def router(prompt: Prompt, load: dict[str, int]) -> Route:
        agent = min(sorted(online), key=lambda a: load.get(a, 0))
        return Route([(agent, "smol")], [], None, None)

    d = Dispatcher(router, lambda expert: sorted(online), lambda agent: 1, 10, retry_after_s=3.0)
    d.admit(entry("r1", timeout_s=60.0), 0.0, 1000.0)  # -> a1
    d.admit(entry("r2", timeout_s=60.0), 0.0, 1000.0)  # -> a2
    d.admit(entry("r3", timeout_s=60.0), 0.0, 1000.0)  # queued: no room
    online.discard("a1")
    moved = d.on_agent_down("a1", "agent a1 went offline", 1.0)
    assert not moved.jobs and not moved.answers  # a2 is full: nothing sent beyond its slot
    assert d.load == {"a2": 1}
    assert not d.tick(1.0 + PARK_GRACE_S * 2).answers  # a full replica is no reason to fail
    actions, _ = d.on_result(done("a2", "r2"), 30.0)
    assert [a.request_id for a, _ in actions.answers] == ["r2"]
    assert [(a, j.request_id) for a, j in actions.jobs] == [("a2", "r1")]  # before r3
    actions, _ = d.on_result(done("a2", "r1"), 31.0)
    assert actions.answers[0][0].status == "ok"
    assert [(a, j.request_id) for a, j in actions.jobs] == [("a2", "r3")]


def test_a_prompt_waits_while_the_fleet_is_coming_back() -> None:
    # No agent online, but the fleet is coming back (the router says transient): prompts wait in
    # the queue; once the router stops saying so, they are answered failed with its reason.
    online: set[str] = set()
    coming_back = True

    def router(prompt: Prompt, load: dict[str, int]) -> Route:
        if not online:
            raise Refused("no active expert can answer", transient=coming_back)
        return Route([(min(online), "smol")], [], None, None)

    d = Dispatcher(router, lambda expert: sorted(online), lambda agent: 1, 10, retry_after_s=3.0)
    assert not d.admit(entry("r1", timeout_s=60.0), 0.0, 1000.0).answers
    assert not d.admit(entry("r2", timeout_s=60.0), 0.5, 1000.5).answers
    assert not d.tick(5.0).answers and d.counts() == (2, 0)
    online.add("a1")  # an agent is back
    sent = d.tick(5.1)
    assert [(a, j.request_id) for a, j in sent.jobs] == [("a1", "r1")]
    online.clear()
    d.admit(entry("r3", timeout_s=60.0), 20.0, 1020.0)
    assert not d.tick(25.0).answers  # r2 and r3 wait
    coming_back = False  # the agents did not come back in time
    failed = d.tick(30.0).answers
    assert [(a.request_id, a.status) for a, _ in failed] == [("r2", "failed"), ("r3", "failed")]
    assert failed[0][0].error == "no active expert can answer"
    # And the deadline holds while it waits.
    coming_back = True
    assert not d.admit(entry("r4", timeout_s=2.0), 40.0, 1000.0).answers
    late = d.tick(42.5).answers
    assert late[0][0].request_id == "r4" and "deadline" in (late[0][0].error or "")
