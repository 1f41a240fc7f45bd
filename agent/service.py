"""The agent process: status, capabilities and telemetry out; plans and jobs in; results out."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from agent import __version__, systemd
from agent.backends.base import Backend, Sampling
from agent.experts import ExpertPool, UnknownExpert, evictions, slots
from agent.host import HostLoadReader, accelerator_name, host_facts
from agent.power import PowerSampler, detect_sensor
from agent.settings import AgentSettings
from agent.templates import choice_prompt
from messages import topics
from messages.base import now_s
from messages.bus import Bus, Inbound
from messages.cancel import Cancel
from messages.capabilities import AgentCapabilities
from messages.events import AgentEvent
from messages.jobs import Job
from messages.plan import ActivationPlan
from messages.results import JobResult, LatencyBreakdown
from messages.status import AgentStatus
from messages.stream import StreamChunk
from messages.telemetry import Telemetry
from messages.topics import Topic

log = logging.getLogger(__name__)


# Results kept to answer a job delivered again (a redelivery, a controller re-sending after a
# reconnect or a takeover) without running it twice. They are kept by what the job is (its
# request id, expert and content digest): another prompt under a request id used before is a
# new job, run anew.
RESULTS_KEPT = 1024
# A job issued longer ago than its timeout plus this (wall clock, controller to agent) waited in
# a broker's queue while this agent was away: nobody waits for its answer any more. The slack
# covers clocks that disagree by less than that.
CLOCK_SLACK_S = 30.0

JobKey = tuple[str, str, str]  # (request_id, expert_id, Job.digest())

# A streamed job's text goes out at most this often (a few tokens a message, QoS 0).
STREAM_FLUSH_S = 0.05

# The agent's retained status or capabilities, found cleared or saying something else, is
# published again at once, then at most this often (the telemetry loop catches up): a client
# rewriting them in a loop gets no louder an echo.
RESTORE_MIN_S = 1.0


class _StreamOut:
    """The pieces of one streamed generation, batched a little and published in order."""

    def __init__(self, agent: Agent, job: Job) -> None:
        self.agent, self.job = agent, job
        self.seq = 0
        self.held: list[str] = []
        self.flushed = time.monotonic()

    def __call__(self, piece: str) -> None:
        self.held.append(piece)
        if time.monotonic() - self.flushed >= STREAM_FLUSH_S:
            self.flush()

    def flush(self, finish_reason: str | None = None) -> None:
        done = finish_reason is not None
        if not self.held and not done:
            return
        chunk = StreamChunk(
            request_id=self.job.request_id,
            expert_id=self.job.expert_id,
            agent_id=self.agent.agent_id,
            seq=self.seq,
            text="".join(self.held),
            done=done,
            finish_reason=finish_reason,  # type: ignore[arg-type]
            time_s=now_s(),
        )
        self.agent.bus.publish(topics.AGENT_STREAM, chunk, agent_id=self.agent.agent_id)
        self.seq += 1
        self.held.clear()
        self.flushed = time.monotonic()


@dataclass
class _QueuedJob:
    job: Job
    received: float  # time.monotonic() at receipt
    cancel: threading.Event = field(default_factory=threading.Event)
    key: JobKey = field(init=False)

    def __post_init__(self) -> None:
        self.key = _job_key(self.job)


def _job_key(job: Job) -> JobKey:
    return (job.request_id, job.expert_id, job.digest())


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.agent_id = settings.agent_id
        self.pool = ExpertPool(settings.experts, settings.expert_memory_budget_mb)
        self.bus = Bus(
            settings.endpoint,
            settings.fleet,
            client_id=f"moe2-{settings.fleet}-agent-{self.agent_id}",
            keepalive_s=settings.keepalive_s,
            on_reject=self._on_reject,
            persistent=True,
            session_expiry_s=settings.session_expiry_s,
            reconnect_max_s=settings.reconnect_max_s,
            on_connected=[self._announce],
        )
        # Jobs waiting for a slot of their expert (at most job_queue_capacity), oldest first,
        # and the jobs running now per expert (at most its ``parallel``), under _jobs_lock.
        self._waiting: deque[_QueuedJob] = deque()
        self._running: Counter[str] = Counter()
        self._job_threads: set[threading.Thread] = set()
        self._wake = threading.Condition(threading.RLock())
        self._live: dict[JobKey, _QueuedJob] = {}  # queued or running
        self._results: OrderedDict[JobKey, JobResult] = OrderedDict()
        self._jobs_lock = self._wake  # one lock: the queue, the slots and the live jobs
        self._plan_lock = threading.Lock()
        self._pending_plan: ActivationPlan | None = None
        self.plan_epoch: int | None = None
        self.plan_term: int | None = None  # the leadership term of the controller that sent it
        self.planned: set[str] = set()  # the experts of the plan applied: unloaded last
        self.load_failures: dict[str, str] = {}  # expert -> why it did not load
        self._stop = threading.Event()
        self.jobs_done = 0
        self.jobs_failed = 0
        self.last_latency_s: float | None = None
        self._load = HostLoadReader()
        self.accelerator = accelerator_name(settings.sysfs_root)  # asked once: it does not change
        model = settings.power_model_w
        self.sensor = detect_sensor(
            settings.sysfs_root,
            power_model=None if model is None else (min(settings.power_idle_w, model), model),
        )
        self.sampler = (
            None if self.sensor is None else PowerSampler(self.sensor, settings.power_sample_hz)
        )
        self._threads: list[threading.Thread] = []
        self._restore_lock = threading.Lock()
        self._restored: dict[str, float] = {}  # "status" / "capabilities" -> last restore
        self._restore_due: set[str] = set()
        self._caps_sent: AgentCapabilities | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def _status(self, state: str, reason: str | None = None) -> AgentStatus:
        failed = dict(self.load_failures)
        if (
            state == "online"
            and reason is None
            and failed
            and set(failed) >= set(self.pool.configs)
        ):
            reason = f"no usable expert: all {len(failed)} failed to load"
        return AgentStatus(
            agent_id=self.agent_id,
            state=state,  # type: ignore[arg-type]
            version=__version__,
            time_s=now_s(),
            keepalive_s=self.settings.keepalive_s,
            telemetry_interval_s=self.settings.telemetry_interval_s,
            reason=reason,
            failed_experts=failed,
        )

    def start(self, wait_s: float = 0.0) -> None:
        """Subscribe and connect; an unreachable broker is retried in the background (a device
        may boot before the broker's host), and every (re)connect announces the agent again.
        With ``wait_s``, wait that long for the first connection."""
        self.bus.set_will(
            topics.AGENT_STATUS, self._status("offline", "connection lost"), agent_id=self.agent_id
        )
        self.bus.subscribe(topics.AGENT_PLAN, self._on_plan, agent_id=self.agent_id)
        self.bus.subscribe(topics.AGENT_JOBS, self._on_job, agent_id=self.agent_id)
        self.bus.subscribe(topics.AGENT_CANCEL, self._on_cancel, agent_id=self.agent_id)
        self.bus.subscribe(
            topics.AGENT_STATUS,
            self._on_own_status,
            on_empty=lambda params: self._restore("status"),
            agent_id=self.agent_id,
        )
        self.bus.subscribe(
            topics.AGENT_CAPABILITIES,
            self._on_own_capabilities,
            on_empty=lambda params: self._restore("capabilities"),
            agent_id=self.agent_id,
        )
        if self.sampler is not None:
            self.sampler.start()
        self.bus.start()
        if wait_s > 0 and not self.bus.wait_connected(wait_s):
            log.warning("broker %s not reachable yet; retrying", self.settings.endpoint.url)
        for target, name in ((self._work, "jobs"), (self._report, "telemetry")):
            thread = threading.Thread(target=target, name=f"agent-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        systemd.ready(f"agent {self.agent_id} online")  # Type=notify units wait for this
        log.info(
            "agent %s online at %s, fleet %s, experts %s",
            self.agent_id,
            self.settings.endpoint.url,
            self.settings.fleet,
            ", ".join(self.pool.configs) or "none",
        )

    def stop(self, reason: str = "shutdown") -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        with self._jobs_lock:
            for item in self._live.values():
                item.cancel.set()
            self._wake.notify_all()
            running = list(self._job_threads)
        for thread in [*self._threads, *running]:
            thread.join(timeout=30)
        if self.bus.connected:
            info = self.bus.publish(
                topics.AGENT_STATUS, self._status("offline", reason), agent_id=self.agent_id
            )
            info.wait_for_publish(timeout=2)
        self.bus.close()
        self.pool.close()
        if self.sampler is not None:
            self.sampler.stop()

    def wait(self) -> None:
        self._stop.wait()

    # -- outbound -----------------------------------------------------------------------

    def _announce(self, session_present: bool) -> None:
        """At every (re)connect: capabilities, status online and telemetry, so a controller
        that lost track of us (a broker restarted without persistence, a controller restarted)
        has us back, heard alive at once. Results of jobs still waiting here go out again once
        reconnected."""
        self.publish_capabilities()
        self.bus.publish(topics.AGENT_STATUS, self._status("online"), agent_id=self.agent_id)
        self.publish_telemetry()

    def publish_capabilities(self) -> None:
        facts = host_facts()
        caps = AgentCapabilities(
            agent_id=self.agent_id,
            hostname=facts.hostname,
            platform=facts.platform,
            python=facts.python,
            cpu_count=facts.cpu_count,
            memory_total_bytes=facts.memory_total_bytes,
            accelerator=self.accelerator,
            power_sensor=(
                self.sensor.source if self.sensor is not None and self.sensor.measured else "none"
            ),
            backends=sorted({c.backend for c in self.settings.experts}),
            experts=self.pool.info(),
            job_queue_capacity=self.settings.job_queue_capacity,
            expert_memory_budget_bytes=self.pool.budget_bytes,
        )
        self._caps_sent = caps
        self.bus.publish(topics.AGENT_CAPABILITIES, caps, agent_id=self.agent_id)

    def telemetry(self) -> Telemetry:
        load = self._load.read()
        power = self.sampler.latest() if self.sampler is not None else None
        loaded = self.pool.loaded_ids
        with self._jobs_lock:
            depth = len(self._waiting)
            running = {e: n for e, n in self._running.items() if n > 0}
        busy = sum(running.values())
        return Telemetry(
            agent_id=self.agent_id,
            time_s=now_s(),
            power_w=power.power_w if power else None,
            energy_j=power.energy_j if power else None,
            energy_source=self.sensor.source if power and self.sensor else None,
            cpu_utilisation=load.cpu_utilisation,
            memory_used_bytes=load.memory_used_bytes,
            process_rss_bytes=load.process_rss_bytes,
            temperature_c=load.temperature_c,
            queue_depth=depth,
            busy=busy > 0,
            slots_total=sum(slots(self.pool.configs[e]) for e in loaded),
            slots_busy=busy,
            expert_slots_busy=running,
            loaded_experts=loaded,
            plan_epoch=self.plan_epoch,
            plan_term=self.plan_term,
            jobs_done=self.jobs_done,
            jobs_failed=self.jobs_failed,
            last_latency_s=self.last_latency_s,
        )

    def publish_telemetry(self) -> None:
        self.bus.publish(topics.AGENT_TELEMETRY, self.telemetry(), agent_id=self.agent_id)

    def _event(self, kind: str, reason: str, topic: str | None = None, **fields: Any) -> None:
        quiet = kind in ("plan_applied", "job_cancelled")
        log.log(logging.INFO if quiet else logging.WARNING, "%s: %s", kind, reason)
        event = AgentEvent(
            agent_id=self.agent_id,
            time_s=now_s(),
            kind=kind,  # type: ignore[arg-type]
            topic=topic,
            reason=reason,
            **fields,
        )
        self.bus.publish(topics.AGENT_EVENTS, event, agent_id=self.agent_id)

    def _cancelled(self, job: Job, completion_tokens: int | None, running: bool) -> None:
        """Say that a job stopped on a cancel (it publishes no result: nobody waits for it)."""
        where = f"after {completion_tokens} tokens" if completion_tokens is not None else "running"
        self._event(
            "job_cancelled",
            f"job {job.request_id} on {job.expert_id} stopped "
            + (where if running else "before it ran"),
            request_id=job.request_id,
            completion_tokens=completion_tokens if running else 0,
        )

    def _on_reject(self, topic: Topic[Any], name: str, reason: str) -> None:
        self._event("rejected", reason, name)

    # -- inbound ------------------------------------------------------------------------

    def _on_plan(self, inbound: Inbound[ActivationPlan]) -> None:
        plan = inbound.message
        if plan.agent_id != self.agent_id:
            self._event("rejected", f"plan is for agent {plan.agent_id!r}", inbound.topic)
            return
        unknown = sorted(set(plan.experts) - set(self.pool.configs))
        if unknown:
            self._event(
                "rejected",
                f"plan epoch {plan.epoch} names unknown experts {unknown}; "
                "keeping the current plan",
                inbound.topic,
            )
            return
        needed = self.pool.memory_needed(plan.experts)
        budget = self.pool.budget_bytes
        if budget is not None and needed > budget:
            self._event(
                "rejected",
                f"plan epoch {plan.epoch} needs {needed / 1e6:.0f} MB of experts, over this "
                f"agent's budget of {budget / 1e6:.0f} MB; keeping the current plan",
                inbound.topic,
            )
            return
        with self._plan_lock:
            held = self._pending_plan
            newest = held.order if held is not None else self.plan_order
            if newest is not None and plan.order < newest:
                self._event(
                    "rejected",
                    f"plan (term {plan.term or 0}, epoch {plan.epoch}) is older than the one "
                    f"held (term {newest[0]}, epoch {newest[1]})",
                    inbound.topic,
                )
                return
            # Plans never go back: a controller that took over has a higher term, and one that
            # finds an agent holding a higher term than its own takes a higher one (from the
            # agent's telemetry), so no stray term or epoch wedges the agent for long.
            self._pending_plan = plan

    @property
    def plan_order(self) -> tuple[int, int] | None:
        """(term, epoch) of the plan applied, None before the first."""
        return None if self.plan_epoch is None else (self.plan_term or 0, self.plan_epoch)

    def _stale(self, term: int | None, what: str, topic: str) -> bool:
        """Whether a job or cancel comes from a controller of an older term than the plan held
        (one that was frozen or cut off, its messages flushed late): it is dropped."""
        if term is None or term >= (self.plan_term or 0):
            return False
        self._event("rejected", f"{what} of term {term}, below the plan's {self.plan_term}", topic)
        return True

    def _on_job(self, inbound: Inbound[Job]) -> None:
        received = time.monotonic()
        job = inbound.message
        if self._stale(job.term, f"job {job.request_id}", inbound.topic):
            return
        try:
            self.pool.check(job.expert_id)
        except UnknownExpert as exc:
            self._event("rejected", f"job {job.request_id}: {exc}", inbound.topic)
            self._fail(job, str(exc), received, load_s=0.0)
            return
        age_s = now_s() - job.issued_s
        if age_s > job.timeout_s + CLOCK_SLACK_S:
            log.info("job %s on %s expired in the broker's queue", job.request_id, job.expert_id)
            return
        item = _QueuedJob(job, received)
        with self._jobs_lock:
            if item.key in self._live:
                return  # the same job again, still queued or running: it answers once
            done = self._results.get(item.key)
            if done is None:
                if len(self._waiting) >= self.settings.job_queue_capacity:
                    capacity = self.settings.job_queue_capacity
                    reason = f"job queue full ({capacity} waiting)"
                    self._fail(job, reason, received, load_s=0.0, keep=False)
                    return
                self._waiting.append(item)
                self._live[item.key] = item
                self._wake.notify_all()
        if done is not None:  # finished already: its result again, not a second run
            self.bus.publish(topics.AGENT_RESULTS, done, agent_id=self.agent_id)

    def _on_own_status(self, inbound: Inbound[AgentStatus]) -> None:
        """A retained status that says something else than this running agent would (offline:
        its will from a dropped connection, or another payload, forged or stale) is put right
        at once; only its time may differ."""
        heard = inbound.message.model_dump(exclude={"time_s"})
        if heard != self._status("online").model_dump(exclude={"time_s"}):
            self._restore("status")

    def _on_own_capabilities(self, inbound: Inbound[AgentCapabilities]) -> None:
        """Retained capabilities other than the last this agent published are put right."""
        if inbound.message != self._caps_sent:
            self._restore("capabilities")

    def _restore(self, what: str) -> None:
        """Publish our ``status`` or ``capabilities`` again (found cleared or overwritten): at
        once, or when RESTORE_MIN_S has passed since the last time (the telemetry loop)."""
        if self._stop.is_set():
            return  # stopping: the offline status is the truth now
        now = time.monotonic()
        with self._restore_lock:
            if now - self._restored.get(what, -RESTORE_MIN_S) < RESTORE_MIN_S:
                self._restore_due.add(what)
                return
            self._restored[what] = now
            self._restore_due.discard(what)
        log.warning("retained %s cleared or overwritten: publishing it again", what)
        if what == "status":
            self.bus.publish(topics.AGENT_STATUS, self._status("online"), agent_id=self.agent_id)
        else:
            self.publish_capabilities()

    def _on_cancel(self, inbound: Inbound[Cancel]) -> None:
        cancel = inbound.message
        if self._stale(cancel.term, f"cancel of {cancel.request_id}", inbound.topic):
            return
        with self._jobs_lock:
            for key, item in self._live.items():
                if key[0] == cancel.request_id and cancel.expert_id in (None, key[1]):
                    item.cancel.set()

    # -- work ---------------------------------------------------------------------------

    def _apply_pending_plan(self) -> None:
        with self._plan_lock:
            plan, self._pending_plan = self._pending_plan, None
        if plan is None:
            return
        wanted = set(plan.experts)
        for expert_id in set(self.pool.loaded_ids) - wanted:
            self.pool.unload(expert_id)
        before = dict(self.load_failures)
        for expert_id in sorted(wanted):
            try:
                self.pool.get(expert_id)
                self.load_failures.pop(expert_id, None)
            except Exception as exc:  # a model that will not load must not stop the agent
                self.load_failures[expert_id] = f"{type(exc).__name__}: {exc}"[:300]
                self._event("load_failed", f"expert {expert_id}: {exc}")
        if self.load_failures != before:  # say it where `moe2 fleet` and the controller look
            self.bus.publish(topics.AGENT_STATUS, self._status("online"), agent_id=self.agent_id)
        self.plan_epoch = plan.epoch
        self.plan_term = plan.term
        self.planned = wanted
        loaded = ", ".join(self.pool.loaded_ids) or "none"
        self._event("plan_applied", f"epoch {plan.epoch}: loaded {loaded}")
        self.publish_capabilities()  # memory and quantisation are known once loaded
        self.publish_telemetry()

    def _work(self) -> None:
        """Starts each waiting job, oldest first, in a thread of its own once its expert has a
        free slot (``parallel`` of them: llama.cpp decodes those jobs together in one batch); a
        job whose expert is full waits without holding up jobs for other experts. A new plan
        is applied once no job runs (none starts meanwhile), so an expert is never unloaded
        under a job."""
        while not self._stop.is_set():
            with self._jobs_lock:
                plan_due = self._pending_plan is not None
                if plan_due and self._job_threads:
                    self._wake.wait(timeout=0.1)  # the running jobs finish first
                    continue
                if not plan_due and not self._start_ready():
                    self._wake.wait(timeout=0.1)
            if plan_due:
                self._apply_pending_plan()

    def _start_ready(self) -> bool:
        """Under _jobs_lock: start the waiting jobs whose expert has a free slot."""
        started = False
        for item in list(self._waiting):
            if item.cancel.is_set():
                self._waiting.remove(item)
                self._live.pop(item.key, None)
                self._cancelled(item.job, None, running=False)
                continue
            expert = item.job.expert_id
            if self._running[expert] >= slots(self.pool.configs[expert]):
                continue
            if not self._make_room(expert):
                continue  # its expert fits once a running job ends: it waits for that
            self._waiting.remove(item)
            self._running[expert] += 1
            thread = threading.Thread(
                target=self._job_thread, args=(item,), name=f"job-{expert}", daemon=True
            )
            self._job_threads.add(thread)
            thread.start()
            started = True
        return started

    def _make_room(self, expert: str) -> bool:
        """Under _jobs_lock: room within the memory budget for ``expert`` (a job for an expert
        the plan leaves out loads it on demand): idle experts unloaded as ``evictions`` says.
        False when only a running job's end makes room."""
        budget = self.pool.budget_bytes
        if budget is None or self.pool.is_loaded(expert):
            return True
        busy = {e for e, n in self._running.items() if n > 0}
        if expert in busy:
            return True  # being loaded for a job of its own: its room was made then
        held = self.pool.held_bytes(sorted(busy))
        victims = evictions(self.pool.memory_bytes(expert), budget, held, busy, self.planned)
        if victims is None:
            return False
        for victim in victims:
            log.info("unloading idle expert %s to make room for %s", victim, expert)
            self.pool.unload(victim)
        return True

    def _job_thread(self, item: _QueuedJob) -> None:
        try:
            self._run(item)
        except Exception:  # _run answers its own failures; this is a bug, not a job's fault
            log.exception("job %s on %s", *item.key)
        finally:
            with self._jobs_lock:
                self._running[item.job.expert_id] -= 1
                self._live.pop(item.key, None)
                self._job_threads.discard(threading.current_thread())
                self._wake.notify_all()

    def _run(self, item: _QueuedJob) -> None:
        job, received = item.job, item.received
        started = time.monotonic()
        deadline = received + job.timeout_s
        if started >= deadline:
            self._fail(job, f"deadline of {job.timeout_s} s passed in the queue", received, 0.0)
            return
        load_s = 0.0
        # The meter covers loading and inference: what this job cost the device.
        meter = self.sampler.job() if self.sampler is not None else nullcontext(None)
        try:
            with meter as energy:
                backend, load_s = self.pool.get(job.expert_id)
                first, fields = self._infer(backend, job, received, deadline, item.cancel)
        except Exception as exc:
            if item.cancel.is_set():
                self._cancelled(job, None, running=True)
                return  # nobody waits for it: no result
            self._event("job_failed", f"job {job.request_id} on {job.expert_id}: {exc}")
            self._fail(job, f"{type(exc).__name__}: {exc}", received, load_s)
            return
        if item.cancel.is_set():
            self._cancelled(job, fields.get("completion_tokens"), running=True)
            return
        total = time.monotonic() - received
        result = JobResult(
            request_id=job.request_id,
            expert_id=job.expert_id,
            agent_id=self.agent_id,
            ok=True,
            latency=LatencyBreakdown(
                queue_s=started - received, load_s=load_s, first_token_s=first, total_s=total
            ),
            # measured when the device has a sensor, else the declared model's estimate (marked
            # estimated), else absent: never invented
            energy=energy.energy_reading() if energy is not None else None,
            job_digest=item.key[2],
            **fields,
        )
        self.jobs_done += 1
        self.last_latency_s = total
        self._publish_result(result, item.key)

    def _publish_result(self, result: JobResult, key: JobKey) -> None:
        """Publish and keep a result as the answer to the job ``key`` if it comes again."""
        with self._jobs_lock:
            self._results[key] = result
            self._results.move_to_end(key)
            while len(self._results) > RESULTS_KEPT:
                self._results.popitem(last=False)
        self.bus.publish(topics.AGENT_RESULTS, result, agent_id=self.agent_id)

    def _infer(
        self,
        backend: Backend,
        job: Job,
        received: float,
        deadline: float,
        cancel: threading.Event | None = None,
    ) -> tuple[float | None, dict[str, Any]]:
        """Score the choices or generate; the first-token time (from receipt) and the result's
        output fields."""
        start = time.monotonic()
        if job.choices is not None:
            template = self.pool.configs[job.expert_id].template
            rendered = choice_prompt(template, job.prompt, job.question, job.choices)
            scores = backend.score_choices(
                rendered.prefix, rendered.continuations, deadline_s=deadline, cancel=cancel
            )
            return start - received + scores.first_score_s, dict(
                choice_logprobs=scores.logprobs,
                choice_probs=scores.probs,
                finish_reason="scored",
                prompt_tokens=scores.prompt_tokens,
            )
        stream = _StreamOut(self, job) if job.stream else None
        gen = backend.generate(
            job.prompt,
            job.max_tokens,
            deadline,
            cancel=cancel,
            messages=(
                None
                if job.messages is None
                else [{"role": m.role, "content": m.content} for m in job.messages]
            ),
            sampling=Sampling(
                temperature=job.temperature,
                top_p=job.top_p,
                top_k=job.top_k,
                seed=job.seed,
                stop=tuple(job.stop or ()),
            ),
            on_text=stream,
        )
        if stream is not None and not (cancel is not None and cancel.is_set()):
            stream.flush(gen.finish_reason)
        first = None if gen.first_token_s is None else start - received + gen.first_token_s
        return first, dict(
            text=gen.text,
            finish_reason=gen.finish_reason,
            prompt_tokens=gen.prompt_tokens,
            completion_tokens=gen.completion_tokens,
        )

    def _fail(
        self, job: Job, error: str, received: float, load_s: float, keep: bool = True
    ) -> None:
        """A failed result; ``keep``: the answer to this job if it comes again (a full queue
        is not: the job may fit when it comes again)."""
        now = time.monotonic()
        self.jobs_failed += 1
        key = _job_key(job)
        result = JobResult(
            request_id=job.request_id,
            expert_id=job.expert_id,
            agent_id=self.agent_id,
            ok=False,
            error=error,
            latency=LatencyBreakdown(queue_s=0.0, load_s=load_s, total_s=now - received),
            job_digest=key[2],
        )
        if keep:
            self._publish_result(result, key)
        else:
            self.bus.publish(topics.AGENT_RESULTS, result, agent_id=self.agent_id)

    def _report(self) -> None:
        """Telemetry every ``telemetry_interval_s``, and the systemd watchdog petted from the
        same loop (a stuck loop stops petting and systemd restarts the agent) at least twice per
        ``WatchdogSec``, however long the telemetry interval."""
        interval = self.settings.telemetry_interval_s
        watchdog = systemd.watchdog_interval_s()
        tick = interval if watchdog is None else min(interval, watchdog / 2)
        due = time.monotonic() + interval
        while not self._stop.wait(max(0.0, min(tick, due - time.monotonic()))):
            if time.monotonic() >= due:
                due += interval
                try:
                    self.publish_telemetry()
                except Exception:
                    log.exception("telemetry failed")
            for what in sorted(self._restore_due):
                self._restore(what)
            systemd.watchdog()
