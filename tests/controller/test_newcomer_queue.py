"""The pure parts of profiling a newcomer (controller/newcomers.py, controller/suite.py): the
stratified sample that enters it into the gate, and the order its prompts go out in: one
newcomer of an agent at a time, to the end of its stage, none its agent cannot load, the
sample before the rest of the suite."""

from __future__ import annotations

from collections import Counter

from controller.newcomers import NewcomerQueue
from controller.profile import Profile
from controller.suite import SuiteItem, load_suite, stratified_sample


def _suite() -> list[SuiteItem]:
    return [i for i in load_suite() if i.split in ("train", "val")]


def _empty_profile() -> Profile:
    return Profile(fleet="t", suite_sha256="0" * 64, items=[], experts={}, records={})


def test_a_stratified_sample_covers_every_category_and_split_evenly() -> None:
    items = _suite()
    groups = Counter((i.category, i.split) for i in items)
    sample = stratified_sample(items, 150)
    assert len(sample) == 150
    assert len({i.id for i in sample}) == 150
    counts = Counter((i.category, i.split) for i in sample)
    assert set(counts) == set(groups)  # every (category, split) is in it
    assert max(counts.values()) - min(counts.values()) <= 1  # evenly
    order = {i.id: n for n, i in enumerate(items)}
    assert [order[i.id] for i in sample] == sorted(order[i.id] for i in sample)  # suite order
    assert stratified_sample(items, 0) == items  # 0: the whole suite
    assert stratified_sample(items, 10**6) == items
    # a group smaller than its share: the others fill the sample
    few = [i for i in items if i.category != "math"] + [i for i in items if i.category == "math"][
        :2
    ]
    assert len(stratified_sample(few, 60)) == 60


def _drain(queue: NewcomerQueue, loadable: set[str], steps: int) -> list[tuple[str, str]]:
    """Send and answer ``steps`` prompts, one out per agent at a time, as the live loop does."""
    sent: list[tuple[str, str]] = []
    now = 0.0
    for _ in range(steps):
        now += 1.0
        nxt = queue.next(now, busy=set(), loadable=lambda k: k in loadable)
        if nxt is None:
            break
        key, item = nxt
        sent.append((key, item.id))
        queue.record(key, ok=True)
        for done in queue.finished():
            queue.progress[done].phase = "training"
            queue.trained(done)  # the gate retrained at once
    return sent


def test_one_newcomer_per_agent_at_a_time_sample_first_then_the_rest() -> None:
    items = stratified_sample(_suite(), 40)
    queue = NewcomerQueue(items, rate_hz=1000.0, sample=12)
    profile = _empty_profile()
    keys = ["x@edge-a", "y@edge-a", "z@edge-b"]
    for key in keys:
        queue.add(key, profile)
    assert queue.progress["x@edge-a"].sample == 12 and queue.progress["x@edge-a"].rest == 28
    sent = _drain(queue, set(keys), 1000)
    assert Counter(k for k, _ in sent) == {k: 40 for k in keys}
    on_a = [k for k, _ in sent if k.endswith("@edge-a")]
    # edge-a: x's sample, then y's sample (entering the gate first), then x's rest, y's rest:
    # never switching back and forth between them
    runs = [k for n, k in enumerate(on_a) if n == 0 or on_a[n - 1] != k]
    assert runs == ["x@edge-a", "y@edge-a", "x@edge-a", "y@edge-a"], runs
    assert on_a[:12] == ["x@edge-a"] * 12 and on_a[12:24] == ["y@edge-a"] * 12
    # the sample is the stratified one, sent before the rest
    x_items = [i for k, i in sent if k == "x@edge-a"]
    assert x_items[:12] == [i.id for i in stratified_sample(items, 12)]
    assert all(p.phase == "done" for p in queue.progress.values())


def test_a_newcomer_its_agent_cannot_load_waits_and_the_next_goes_on() -> None:
    items = stratified_sample(_suite(), 12)
    queue = NewcomerQueue(items, rate_hz=1000.0, sample=6)
    profile = _empty_profile()
    for key in ("big@edge-a", "small@edge-a"):
        queue.add(key, profile)
    sent = _drain(queue, {"small@edge-a"}, 100)
    assert {k for k, _ in sent} == {"small@edge-a"}
    assert queue.progress["big@edge-a"].phase == "waiting"
    assert "memory budget" in str(queue.progress["big@edge-a"])
    assert queue.progress["small@edge-a"].phase == "done"


def test_busy_agents_and_the_rate_limit_hold_prompts_back() -> None:
    items = stratified_sample(_suite(), 12)
    queue = NewcomerQueue(items, rate_hz=2.0, sample=6)
    queue.add("x@edge-a", _empty_profile())
    queue.add("z@edge-b", _empty_profile())
    assert queue.next(10.0, busy={"edge-a", "edge-b"}) is None
    first = queue.next(10.0, busy={"edge-a"})
    assert first is not None and first[0] == "z@edge-b"
    assert queue.next(10.1, busy=set()) is None  # 2 per second at most
    second = queue.next(10.6, busy={"edge-b"})
    assert second is not None and second[0] == "x@edge-a"


def test_progress_says_how_far_in_each_stage() -> None:
    items = stratified_sample(_suite(), 12)
    queue = NewcomerQueue(items, rate_hz=1000.0, sample=6)
    queue.add("x@edge-a", _empty_profile())
    prog = queue.progress["x@edge-a"]
    assert str(prog) == "profiling 0/6 prompts (then 6 more in the gate)"
    assert prog.note() == "being profiled: 0/6 prompts, not in the gate yet"
    _drain(queue, {"x@edge-a"}, 8)
    assert prog.phase == "refining" and prog.total == 12
    assert str(prog) == "in the gate; refining 8/12 prompts"
    assert prog.note() == "in the gate; profiling goes on: 8/12 prompts"
