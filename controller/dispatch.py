"""Prompts from acceptance to answer: a bounded queue (oldest first), jobs sent only where an
agent has room, answers as soon as they are decided, failover when an agent goes away.

The dispatcher does no I/O. Each call returns the ``Actions`` to carry out (jobs and cancels to
publish, answers to send, events to report, results to count); the controller service publishes
them. Time comes in as ``now`` (``time.monotonic()``), so every rule can be driven step by step
in a test. Who answers a prompt is asked of a router (controller/routing.py). Every job result
comes here; what it says of an expert's cost goes on to a ``ResultObserver`` (the live-cost
loop), which also takes the results of its own probes, the jobs that answer no prompt, and
hears of every job cut without a result (a censored sample: left out by an early answer, or
at the prompt's deadline) and of every answer over its budgets.

A budget does not cut a job: every job may take until its prompt's own deadline
(``timeout_s``). An answer that comes later than its category's delay budget, or spends more
than the energy budget, is given all the same, marked with the budgets it ran over
(``Answer.over_budget``, an ``over_budget`` event); the observer then re-plans.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.aggregate import Arrival, Combined, combine, combined_if_decided, over_budget
from controller.decisions import least_loaded
from controller.ledger import Entry, ReplyRoute
from messages.answers import Answer, ExpertFailure
from messages.base import now_s
from messages.budgets import Budgets
from messages.cancel import Cancel
from messages.expert_key import ExpertOnAgent, expert_key
from messages.jobs import Job
from messages.prompts import Prompt
from messages.results import JobResult

Pair = ExpertOnAgent

# A job whose agent went away with no replica left, and nothing else to answer with, waits this
# long for one to come back (a restarting broker sends every agent's will at once; agents are
# back within seconds) before the prompt is answered without it. A prompt that finds no agent
# online while the fleet is coming back (Refused.transient) waits as long for one.
PARK_GRACE_S = 10.0


class Refused(Exception):
    """A prompt that will not be dispatched, with the reason it is answered with."""

    def __init__(
        self,
        reason: str,
        failed: list[ExpertFailure] | None = None,
        rejected: bool = False,
        transient: bool = False,
    ) -> None:
        """``transient``: no agent is online, but the fleet had agents a moment ago (a broker
        restart, the controller's own reconnect): the prompt waits in the queue, within its
        deadline, while the router says so (the router stops saying so PARK_GRACE_S after the
        last agent was heard from, and then the waiting prompts are answered)."""
        super().__init__(reason)
        self.reason, self.failed, self.rejected = reason, failed or [], rejected
        self.transient = transient


@dataclass(frozen=True)
class Route:
    """Who answers a prompt: the pairs, the named experts that cannot, gate weights (None:
    uniform), the budgets it is answered under, and the room of each pair as the router read
    it: (jobs its agent may hold, jobs that expert may hold); None: ask ``capacity``/``slots``."""

    targets: list[Pair]
    failed: list[ExpertFailure]
    weights: dict[str, float] | None
    budgets: Budgets | None
    room: dict[Pair, tuple[int, int]] | None = None


Router = Callable[[Prompt, dict[str, int]], Route]  # raises Refused
Replicas = Callable[[str], list[str]]  # expert id -> online agents where it is active
Capacity = Callable[[str], int]  # agent id -> jobs it may hold at once
Slots = Callable[[str, str], int]  # (agent id, expert id) -> jobs that expert may hold at once


class ResultObserver(Protocol):
    """Who learns from job results besides the prompts they answer (the live-cost loop)."""

    def on_job_result(
        self, result: JobResult, category: str | None, round_trip_s: float, now: float
    ) -> None:
        """A result of a job of a prompt in flight, ``round_trip_s`` after it was sent."""

    def claim(self, result: JobResult, now: float) -> bool:
        """A result that answers no prompt in flight: True when it is the observer's own (a
        probe), which the dispatcher then neither counts nor answers."""

    def on_job_cut(self, pair: Pair, category: str | None, elapsed_s: float, now: float) -> None:
        """A job of a prompt cut with no result, ``elapsed_s`` after it was sent: left out by
        an early answer or at the prompt's deadline. Its delay was at least that (censored)."""

    def on_over_budget(self, now: float) -> None:
        """An answer just ran over a budget it was answered under."""


@dataclass
class Actions:
    jobs: list[tuple[str, Job]] = field(default_factory=list)
    cancels: list[tuple[str, Cancel]] = field(default_factory=list)
    answers: list[tuple[Answer, list[ReplyRoute]]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    results: list[JobResult] = field(default_factory=list)  # results taken: for the metrics

    def extend(self, other: Actions) -> Actions:
        self.jobs += other.jobs
        self.cancels += other.cancels
        self.answers += other.answers
        self.events += other.events
        self.results += other.results
        return self

    def event(self, kind: str, reason: str, **fields: Any) -> None:
        self.events.append({"kind": kind, "reason": reason, **fields})


@dataclass
class Pending:
    entry: Entry
    received: float  # monotonic
    deadline: float  # monotonic
    jobs: dict[Pair, float] = field(default_factory=dict)  # outstanding: pair -> dispatch time
    sent: dict[Pair, Job] = field(default_factory=dict)
    arrivals: dict[Pair, Arrival] = field(default_factory=dict)
    failed: list[ExpertFailure] = field(default_factory=list)
    # expert -> (agent, why, when): a job whose agent went away with no replica to take it
    parked: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    weights: dict[str, float] | None = None
    budgets: Budgets | None = None

    @property
    def prompt(self) -> Prompt:
        return self.entry.prompt


@dataclass
class _Queued:
    entry: Entry
    received: float
    deadline: float


class Dispatcher:
    """Thread-safe; every public method returns what to publish."""

    def __init__(
        self,
        router: Router,
        replicas: Replicas,
        capacity: Capacity,
        max_queued: int,
        retry_after_s: float = 1.0,
        early_answers: bool = True,
        slots: Slots | None = None,
        observer: ResultObserver | None = None,
    ) -> None:
        self.router, self.replicas, self.capacity = router, replicas, capacity
        self.slots = slots
        self.observer = observer
        self.max_queued = max_queued
        self.early_answers = early_answers
        self.retry_after_s = retry_after_s
        self.pending: dict[str, Pending] = {}
        self.queue: deque[_Queued] = deque()
        self.load: dict[str, int] = {}  # agent -> jobs outstanding
        self.pair_load: dict[Pair, int] = {}  # (agent, expert) -> jobs outstanding
        self.late_results = 0
        self.answered = 0
        self._lock = threading.RLock()

    # -- admission ----------------------------------------------------------------------

    def holds(self, request_id: str) -> Entry | None:
        with self._lock:
            if request_id in self.pending:
                return self.pending[request_id].entry
            return next((q.entry for q in self.queue if q.entry.request_id == request_id), None)

    def admit(self, entry: Entry, now: float, wall_now: float) -> Actions:
        """Queue an accepted prompt (its deadline counts from ``entry.received_s``), or answer
        ``busy`` at once when the queue is full."""
        received = now - max(0.0, wall_now - entry.received_s)
        item = _Queued(entry, received, received + entry.prompt.timeout_s)
        with self._lock:
            if len(self.queue) >= self.max_queued:
                actions = Actions()
                reason = (
                    f"fleet busy: {len(self.queue)} prompts already wait for room; retry in "
                    f"{self.retry_after_s:g} s"
                )
                actions.event("busy", f"request {entry.request_id}: {reason}")
                self._answer(actions, entry, received, now, "busy", reason)
                return actions
            self.queue.append(item)
            return self.pump(now)

    def pump(self, now: float) -> Actions:
        """Dispatch queued prompts, oldest first, while their agents have room."""
        actions = Actions()
        with self._lock:
            # Jobs already accepted whose agent went away come first: their prompts are older.
            for pending in [p for p in self.pending.values() if p.parked]:
                self._unpark(actions, pending, now)
            while self.queue:
                head = self.queue[0]
                if now >= head.deadline:
                    self.queue.popleft()
                    why = f"deadline of {head.entry.prompt.timeout_s:g} s passed in the queue"
                    self._answer(actions, head.entry, head.received, now, "failed", why)
                    continue
                try:
                    route = self.router(head.entry.prompt, dict(self.load))
                except Refused as refusal:
                    if refusal.transient:
                        break  # agents are coming back: the oldest waits, the rest behind it
                    self.queue.popleft()
                    if refusal.rejected:
                        actions.event(
                            "rejected",
                            f"request {head.entry.request_id}: {refusal.reason}",
                            topic="prompts",
                            request_id=head.entry.request_id,
                        )
                    status = "rejected" if refusal.rejected else "failed"
                    self._answer(
                        actions,
                        head.entry,
                        head.received,
                        now,
                        status,
                        refusal.reason,
                        refusal.failed,
                    )
                    continue
                if any(self._full(a, e, route.room) for a, e in route.targets):
                    break  # the oldest waits for room; the rest wait behind it
                self.queue.popleft()
                pending = Pending(
                    head.entry,
                    head.received,
                    head.deadline,
                    failed=list(route.failed),
                    weights=route.weights,
                    budgets=route.budgets,
                )
                self.pending[head.entry.request_id] = pending
                for agent, expert in route.targets:
                    self._send(actions, pending, agent, expert, now)
        return actions

    def _full(
        self, agent: str, expert: str, room: dict[Pair, tuple[int, int]] | None = None
    ) -> bool:
        """Whether the agent, or that expert on it (every slot taken), has no room now
        (``room``: the route's reading of both limits, else asked now)."""
        known = room.get(Pair(agent, expert)) if room is not None else None
        capacity = known[0] if known else self.capacity(agent)
        if self.load.get(agent, 0) >= capacity:
            return True
        if self.slots is None:
            return False
        slots = known[1] if known else self.slots(agent, expert)
        return self.pair_load.get((agent, expert), 0) >= slots

    def _send(
        self, actions: Actions, pending: Pending, agent: str, expert: str, now: float
    ) -> None:
        prompt = pending.prompt
        remaining = pending.deadline - now
        # Agents get a little less time than the asker, so late tokens still make it back.
        timeout = max(0.05, remaining - min(1.0, 0.1 * remaining))
        job = Job(
            request_id=pending.entry.request_id,
            expert_id=expert,
            prompt=prompt.prompt,
            choices=prompt.choices,
            question=prompt.question,
            max_tokens=prompt.max_tokens,
            timeout_s=min(timeout, 3600.0),
            issued_s=now_s(),
            messages=prompt.messages,
            stream=prompt.stream,
            **prompt.sampling,
        )
        pending.jobs[(agent, expert)] = now
        pending.sent[(agent, expert)] = job
        self.load[agent] = self.load.get(agent, 0) + 1
        self.pair_load[(agent, expert)] = self.pair_load.get((agent, expert), 0) + 1
        actions.jobs.append((agent, job))

    def _release(self, pending: Pending, pair: Pair) -> None:
        if pending.jobs.pop(pair, None) is not None:
            self.load[pair[0]] = max(0, self.load.get(pair[0], 0) - 1)
            self.pair_load[pair] = max(0, self.pair_load.get(pair, 0) - 1)

    # -- results and failures -----------------------------------------------------------

    def on_result(self, result: JobResult, now: float) -> tuple[Actions, str | None]:
        """Take a result; the second value is why it was refused (None when taken or late).
        The observer hears of it first (outside the lock: it may report an event)."""
        if self._observed(result, now):
            return Actions(), None  # the observer's own probe, not a prompt's job
        actions = Actions(results=[result])
        pair = (result.agent_id, result.expert_id)
        with self._lock:
            pending = self.pending.get(result.request_id)
            if pending is None:
                self.late_results += 1
                return actions, None
            job = pending.sent.get(pair)
            if job is not None and result.job_digest not in (None, job.digest()):
                return actions, (
                    f"result of {expert_key(*pair)} for request "
                    f"{result.request_id} answers another job (other content under that id)"
                )
            if pair in pending.arrivals:
                return actions, None  # the same result again (a re-sent job): already counted
            if pair not in pending.jobs:
                if pair in pending.sent:  # failed over or left out, then answered after all
                    self.late_results += 1
                    return actions, None
                return actions, f"request {result.request_id} did not ask {expert_key(*pair)}"
            pending.arrivals[pair] = Arrival(result, now - pending.jobs[pair])
            self._release(pending, pair)
            self._settle(actions, pending, now)
            actions.extend(self.pump(now))
        return actions, None

    def _observed(self, result: JobResult, now: float) -> bool:
        """Tell the observer: a job's round trip, or a result of no prompt in flight (True
        when the observer claims it)."""
        if self.observer is None:
            return False
        with self._lock:
            pending = self.pending.get(result.request_id)
            sent = pending.jobs.get((result.agent_id, result.expert_id)) if pending else None
            category = pending.prompt.category if pending else None
        if pending is None:
            return self.observer.claim(result, now)
        if sent is not None:
            self.observer.on_job_result(result, category, now - sent, now)
        return False

    def _settle(self, actions: Actions, pending: Pending, now: float) -> None:
        """Answer the request if what is still out can no longer change the answer."""
        if pending.parked:
            return  # waiting for a replica of an expert whose agent went away
        arrived = {expert_key(a, e): arr for (a, e), arr in pending.arrivals.items()}
        outstanding = [expert_key(a, e) for a, e in pending.jobs]
        # A prompt that names its experts wants each one's output (profiling does): it waits.
        if outstanding and (not self.early_answers or pending.prompt.experts is not None):
            return
        combined = combined_if_decided(
            pending.prompt.choices, arrived, outstanding, pending.failed, pending.weights
        )
        if combined is not None:
            self._finish(actions, pending, now, "decided", combined)

    def withdraw(self, entry: Entry, reason: str, now: float) -> Actions:
        """Stop a prompt its asker no longer wants: out of the queue, or each job still out
        cancelled on its agent; answered ``failed`` with ``reason`` (whether or not it was
        held here), and the room it took given to the prompts waiting."""
        actions = Actions()
        request_id = entry.request_id
        with self._lock:
            received, stopped = now, []
            pending = self.pending.pop(request_id, None)
            if pending is not None:
                received = pending.received
                pending.parked.clear()
                for agent, expert in list(pending.jobs):
                    self._release(pending, (agent, expert))
                    stopped.append(ExpertFailure(agent_id=agent, expert_id=expert, reason=reason))
                    cancel = Cancel(
                        request_id=request_id,
                        expert_id=expert,
                        reason=reason[:200],
                        time_s=now_s(),
                    )
                    actions.cancels.append((agent, cancel))
            for item in [q for q in self.queue if q.entry.request_id == request_id]:
                self.queue.remove(item)
                received = item.received
            self._answer(actions, entry, received, now, "failed", reason, stopped)
            actions.extend(self.pump(now))
        return actions

    def on_agent_down(self, agent_id: str, reason: str, now: float) -> Actions:
        """Every job outstanding on the agent goes to another active replica of its expert
        (least loaded), or is counted failed, and the request answered if that decides it."""
        actions = Actions()
        with self._lock:
            self.load.pop(agent_id, None)
            for pair in [p for p in self.pair_load if p[0] == agent_id]:
                del self.pair_load[pair]
            for pending in list(self.pending.values()):
                lost = [p for p in pending.jobs if p[0] == agent_id]
                for pair in lost:
                    pending.jobs.pop(pair)
                for pair in lost:
                    expert = pair[1]
                    spare = [
                        a
                        for a in self.replicas(expert)
                        if a != agent_id and (a, expert) not in pending.sent
                    ]
                    target = least_loaded(
                        [a for a in spare if not self._full(a, expert)], self.load
                    )
                    if target is None and spare:
                        # Every other replica is full: the job waits for a slot, as queued
                        # prompts do (a job goes only where there is room), ahead of them.
                        pending.parked[expert] = (agent_id, reason, now)
                        continue
                    if target is None and not pending.jobs and not pending.arrivals:
                        # Nothing else to answer with (a broker going down sends every will at
                        # once): wait, within the deadline, for a replica to come back.
                        pending.parked[expert] = (agent_id, reason, now)
                        continue
                    if target is None:
                        pending.failed.append(
                            ExpertFailure(agent_id=agent_id, expert_id=expert, reason=reason)
                        )
                        continue
                    if pending.weights is not None:
                        pending.weights[expert_key(target, expert)] = pending.weights.pop(
                            expert_key(agent_id, expert), 0.0
                        )
                    actions.event(
                        "failover",
                        f"request {pending.entry.request_id}: {expert} moved from {agent_id} "
                        f"({reason}) to {target}",
                        request_id=pending.entry.request_id,
                        agent_id=agent_id,
                    )
                    self._send(actions, pending, target, expert, now)
                if pending.entry.request_id in self.pending:
                    self._settle(actions, pending, now)
            actions.extend(self.pump(now))
        return actions

    def resend(self, agent_id: str | None = None) -> Actions:
        """The jobs outstanding (on one agent, or everywhere) again: after a reconnect, a job or
        its result may have been lost with a broker that kept no session. Agents answer a job
        they have seen once only (a finished one by re-sending its result)."""
        actions = Actions()
        with self._lock:
            for pending in self.pending.values():
                for pair in pending.jobs:
                    if agent_id is None or pair[0] == agent_id:
                        actions.jobs.append((pair[0], pending.sent[pair]))
        return actions

    def tick(self, now: float) -> Actions:
        """Answer what passed its deadline, then dispatch what now fits."""
        actions = Actions()
        with self._lock:
            for pending in [p for p in self.pending.values() if now >= p.deadline]:
                self._finish(actions, pending, now, "deadline")
            actions.extend(self.pump(now))
        return actions

    def _unpark(self, actions: Actions, pending: Pending, now: float) -> None:
        """Send a parked job to a replica of its expert that is active again (the same agent
        back after a reconnect takes it once, or answers with the result it has)."""
        for expert, (agent_id, why, since) in list(pending.parked.items()):
            replicas = self.replicas(expert)
            target = least_loaded([a for a in replicas if not self._full(a, expert)], self.load)
            if target is None:
                if not replicas and now - since >= PARK_GRACE_S:  # gone for good: without it
                    del pending.parked[expert]
                    pending.failed.append(
                        ExpertFailure(agent_id=agent_id, expert_id=expert, reason=why)
                    )
                    self._settle(actions, pending, now)
                continue
            del pending.parked[expert]
            if pending.weights is not None and target != agent_id:
                pending.weights[expert_key(target, expert)] = pending.weights.pop(
                    expert_key(agent_id, expert), 0.0
                )
            pending.sent.pop((target, expert), None)
            self._send(actions, pending, target, expert, now)

    # -- answers ------------------------------------------------------------------------

    def _finish(
        self,
        actions: Actions,
        pending: Pending,
        now: float,
        why: str,
        combined: Combined | None = None,
    ) -> None:
        """Answer the prompt (``combined``: the answer as decided; else what arrived by now),
        marked with the budgets it ran over."""
        request_id = pending.entry.request_id
        self.pending.pop(request_id, None)
        left_out = self._cut_all(actions, pending, now, why)
        combined = combined or combine(
            pending.prompt.choices,
            list(pending.arrivals.values()),
            pending.failed,
            weights=pending.weights,
        )
        status = "ok" if not combined.failed else ("partial" if combined.experts else "failed")
        latency = min(max(0.0, now - pending.received), 1e6)
        overruns = (
            over_budget(pending.budgets, pending.prompt.category, latency, combined.energy_j)
            if combined.experts
            else []
        )
        answer = Answer(
            request_id=request_id,
            status=status,
            answer=combined.answer,
            choice_index=combined.choice_index,
            choice_probs=combined.choice_probs,
            experts=combined.experts,
            failed=combined.failed,
            left_out=left_out,
            error=None if combined.experts else "no expert answered",
            latency_s=latency,
            energy_j=combined.energy_j,
            energy_estimated=any(e.energy_source == "estimate" for e in combined.experts),
            budgets=pending.budgets,
            over_budget=overruns,
        )
        if status == "failed":
            actions.event(
                "request_failed",
                f"request {request_id}: no expert answered",
                request_id=request_id,
            )
        if overruns:
            text = "; ".join(o.reason for o in overruns)
            actions.event("over_budget", f"request {request_id}: {text}", request_id=request_id)
            if self.observer is not None:
                self.observer.on_over_budget(now)
        self.answered += 1
        actions.answers.append((answer, pending.entry.routes))

    def _cut_all(
        self, actions: Actions, pending: Pending, now: float, why: str
    ) -> list[ExpertFailure]:
        """Every job of a prompt being answered that is still out, or parked, ends here: the
        parked ones failed, the ones out cancelled on their agents (failed at the deadline,
        else left out: returned), each a censored sample for the observer (its delay was at
        least as long as it ran)."""
        request_id = pending.entry.request_id
        for expert, (agent_id, reason, _) in pending.parked.items():
            pending.failed.append(
                ExpertFailure(
                    agent_id=agent_id,
                    expert_id=expert,
                    reason=f"{reason}; no replica could take it before the deadline",
                )
            )
        pending.parked.clear()
        left_out = []
        for pair, sent in list(pending.jobs.items()):
            self._release(pending, pair)
            if self.observer is not None:
                self.observer.on_job_cut(pair, pending.prompt.category, now - sent, now)
            reason = (
                f"no result within {pending.prompt.timeout_s:g} s"
                if why == "deadline"
                else "outcome decided without it"
            )
            (pending.failed if why == "deadline" else left_out).append(
                ExpertFailure(agent_id=pair[0], expert_id=pair[1], reason=reason)
            )
            cancel = Cancel(request_id=request_id, expert_id=pair[1], reason=why, time_s=now_s())
            actions.cancels.append((pair[0], cancel))
        return left_out

    def _answer(
        self,
        actions: Actions,
        entry: Entry,
        received: float,
        now: float,
        status: str,
        error: str,
        failed: list[ExpertFailure] | None = None,
    ) -> None:
        if status in ("failed", "rejected"):
            actions.event(
                "request_failed",
                f"request {entry.request_id}: {error}",
                request_id=entry.request_id,
            )
        self.answered += 1
        actions.answers.append(
            (
                Answer(
                    request_id=entry.request_id,
                    status=status,  # type: ignore[arg-type]
                    answer=None,
                    experts=[],
                    failed=failed or [],
                    error=error,
                    latency_s=min(max(0.0, now - received), 1e6),
                    retry_after_s=self.retry_after_s if status == "busy" else None,
                ),
                entry.routes,
            )
        )

    def stream_leaders(self, request_id: str) -> tuple[list[Pair], list[ReplyRoute]] | None:
        """For a pending prompt that asked to stream: the pairs with the highest gate weight
        (every pair when weights are uniform) and the prompt's reply routes; else None."""
        with self._lock:
            pending = self.pending.get(request_id)
            if pending is None or not pending.prompt.stream:
                return None
            pairs = list(pending.sent)
            if pending.weights:
                weight = {p: pending.weights.get(expert_key(*p), 0.0) for p in pairs}
                top = max(weight.values(), default=0.0)
                pairs = [p for p in pairs if weight[p] >= top]
            return pairs, list(pending.entry.routes)

    def counts(self) -> tuple[int, int]:
        """(queued, pending)."""
        with self._lock:
            return len(self.queue), len(self.pending)

    def drop_all(self) -> None:
        """Forget every prompt (a controller stepping down: the active one takes them over)."""
        with self._lock:
            self.pending.clear()
            self.queue.clear()
            self.load.clear()
            self.pair_load.clear()


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]
