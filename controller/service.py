"""The controller process: MQTT in and out around the fleet registry, the planner, the
dispatcher and the ledger.

Decisions live elsewhere: who leads (``leadership``), which experts each agent holds
(``plan_experts``) under which plan epoch (``plan_epochs``), when a prompt is dispatched,
answered or failed over (``dispatch`` and ``decisions``), who answers it (``routing``), what the
live costs say (``adapt``). This module receives messages, calls those, and publishes what they
decide: ``_execute`` is the one path by which jobs go out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from controller import __version__
from controller.adapt import Adaptation, LoopLinks
from controller.config_sync import ConfigSync, Ready, Step
from controller.damping import FlapDamper, ReplanTimer
from controller.decisions import cancelled_reason, may_cancel
from controller.dispatch import Actions, Dispatcher
from controller.fleet_config import (
    LocalConfig,
    adopted_settings,
    configured_budgets,
    describe,
    local_config,
)
from controller.gate_loading import gate_state, start_loading
from controller.identity import ControllerIdentity, claim, default_state_root
from controller.intake import Arrival, arrive, loose_json, reply_routes
from controller.leadership import next_term, should_lead
from controller.lease import Lease
from controller.ledger import Entry, Ledger, ReplyRoute
from controller.metrics import ControllerMetrics, FleetSnapshot
from controller.plan_epochs import Planner
from controller.plan_experts import cache_plan_problem, online_keys, wanted_experts
from controller.registry import Change, FleetRegistry
from controller.replies import as_asked, is_answer, refusal, too_large
from controller.request_ids import scoped_id
from controller.routing import Router
from controller.selection.errors import BudgetError
from controller.settings import ControllerSettings
from messages import topics
from messages.answers import Answer
from messages.base import TOPIC_LEVEL_RE, now_s
from messages.budgets import Budgets
from messages.bus import Bus, Inbound, Outgoing, PublishRefused
from messages.cache_plan import CachePlan
from messages.capabilities import AgentCapabilities
from messages.controller import ControllerEvent, ControllerStatus, FleetPlan
from messages.costs import CostTable
from messages.fleet_config import ConfigChunk, FleetConfig
from messages.prompt_cancel import PromptCancel
from messages.prompts import Prompt
from messages.results import JobResult
from messages.status import AgentStatus
from messages.stream import StreamChunk
from messages.telemetry import Telemetry
from messages.topics import Topic

if TYPE_CHECKING:  # numpy and numba are imported only with a gate (controller/selection)
    from controller.selection.live import LiveSelection
    from controller.selection.solver import SelectionResult

log = logging.getLogger(__name__)

# An agent whose telemetry shows another plan than it was sent gets it again, at most this often.
RESYNC_S = 5.0
# A time-limited selection is improved in the background in slices of this length, this many.
IMPROVE_SLICE_S = 1.0
IMPROVE_SLICES = 120
# A watch-loop step this much later than the last one means this process was not running (a
# freeze, a suspended VM): agents' silence is not counted over that gap.
CLOCK_GAP_S = 1.0


class Controller:
    def __init__(
        self, settings: ControllerSettings, identity: ControllerIdentity | None = None
    ) -> None:
        self.settings = settings
        self.identity = identity or claim(
            settings.state_dir or default_state_root(), settings.fleet, settings.controller_id
        )
        self.controller_id = self.identity.controller_id
        self.incarnation = int(time.time() * 1000)
        self.since_s = now_s()
        self.registry = FleetRegistry(settings.silence_factor)
        self.planner = Planner(self.controller_id, self.incarnation)
        self.ledger = Ledger(
            self.identity.state_dir / "ledger.jsonl", sync=self.settings.ledger_sync
        )
        self.bus = self._make_bus()
        self._lock = threading.RLock()
        # the fleet's configuration: ours, the fleet's, and whether we may lead with it
        self.config = ConfigSync(
            local_config(settings, self.controller_id),
            settings.replace_config,
            self.identity.state_dir / "config",
            settings.config_fetch_timeout_s,
        )
        self._retained_budgets: Budgets | None = None  # the last controller/budgets heard
        self._peer_costs: CostTable | None = None  # the last cost table heard
        self._adapt_stop = threading.Event()  # ends the live-cost loop in force
        # Fencing (docs/reliability.md, "One active controller"): ``leader`` is what the
        # election decided and the status says; the controller acts only while ``active``.
        self.leader = False
        self.term = 0  # leadership term: 1 + the highest seen, taken at each election won
        self._seen_term = 0  # the highest term seen: statuses, fleet plans, agents' telemetry
        self._serving = False  # resumed as the leader on this connection, lease fresh
        self._new_term = False  # the next resume is a takeover (a new term), not a renewal
        self.lease = Lease(settings.keepalive_s / 2)
        # answers the broker had not acknowledged when the connection dropped, and their term
        self._held_answers: list[Outgoing] = []
        self._held_answers_term: int | None = None
        self._last_tick = time.monotonic()
        self._peers: dict[str, ControllerStatus] = {}
        self._resynced: dict[str, float] = {}
        # Fleet changes make one re-plan per window; flapping agents are held out until steady.
        self._replans = ReplanTimer(settings.replan_window_s)
        self._damper = FlapDamper(
            settings.flap_limit, settings.flap_window_s, settings.flap_steady_s
        )
        self._held: set[str] = set()  # the agents the last re-plan held out
        self._improver: threading.Thread | None = None
        self.cache_plan: CachePlan | None = None
        self.last_selection: SelectionResult | None = None
        self.configured_budgets = Budgets(
            energy_j=settings.energy_budget_j,
            delay_s=dict(settings.delay_budget_s),
            top_k=settings.top_k,
        )
        self.rejected: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._collaborators()
        self.metrics_listen: tuple[str, int] | None = None  # `--metrics HOST:PORT`
        # request id -> the pair whose stream is relayed, and the seq after its last chunk
        self._stream_leads: dict[str, tuple[tuple[str, str], int]] = {}

    def _make_bus(self) -> Bus:
        settings = self.settings
        return Bus(
            settings.endpoint,
            settings.fleet,
            client_id=f"moe2-{settings.fleet}-controller-{self.controller_id}",
            keepalive_s=settings.keepalive_s,
            on_reject=self._on_reject,
            persistent=True,
            session_expiry_s=settings.session_expiry_s,
            reconnect_max_s=settings.reconnect_max_s,
            on_connected=[self._on_connected],
        )

    def _collaborators(self) -> None:
        """The router, the live-cost loop, the dispatcher and the metrics, each given only
        what it reads and what it may ask for."""
        settings = self.settings
        self.router = Router(  # who answers a prompt (controller/routing.py)
            self.registry,
            self.planner,
            settings.agent_job_window,
            self.configured_budgets,
            _configured_selection(
                settings, self.configured_budgets, lambda said: self._event("gate", said)
            ),
            (self._replans, self._damper),
        )
        # live costs, drift, newcomers (controller/adapt.py); it may install an extended gate
        self.adaptation = Adaptation(self._loop_links())
        self.router.no_expert_reason = self.adaptation.no_expert_reason
        self.dispatcher = Dispatcher(
            self.router.route,
            self.router.replicas,
            self.router.capacity,
            settings.max_queued_prompts,
            settings.busy_retry_after_s,
            settings.early_answers,
            slots=self.router.slots,
            observer=self.adaptation,  # learns from results, takes its probes' results
        )
        self.metrics = ControllerMetrics(self._snapshot)

    @property
    def answered(self) -> int:
        return self.dispatcher.answered

    @property
    def selection(self) -> LiveSelection | None:
        """The MoE² selection in force (None without a profile and gate): the router's."""
        return self.router.selection

    @selection.setter
    def selection(self, selection: LiveSelection | None) -> None:
        self.router.selection = selection

    @property
    def budgets(self) -> Budgets:
        """The fleet's budgets in force: the router's."""
        return self.router.budgets

    @budgets.setter
    def budgets(self, budgets: Budgets) -> None:
        self.router.budgets = budgets

    @property
    def _connected_at(self) -> float | None:
        """When this connection came up (monotonic): the router tells a fleet coming back."""
        return self.router.connected_at

    @_connected_at.setter
    def _connected_at(self, when: float | None) -> None:
        self.router.connected_at = when

    def _loop_links(self) -> LoopLinks:
        """What the live-cost loop may read and ask for (controller/adapt.py)."""
        return LoopLinks(
            settings=self.settings,
            state_dir=self.identity.state_dir,
            controller_id=self.controller_id,
            registry=self.registry,
            stopped=self._adapt_stop,
            active=lambda: self.active,
            planned=lambda: self.planner.assignments,
            load=lambda: self.dispatcher.load,
            selection=lambda: self.router.selection,
            budgets=lambda: self.router.budgets,
            install=self._install,
            replan=lambda force: self.replan(force=force),
            execute=self._execute,
            publish_costs=self._publish_costs,
            event=self._event,
        )

    def _install(self, selection: LiveSelection) -> None:
        """Put a selection in force (one assignment: no lock, the router reads it)."""
        self.router.selection = selection

    def _publish_costs(self, table: CostTable) -> None:
        if self.active and self.bus.connected:
            self.bus.publish(topics.CONTROLLER_COSTS, table)

    def _snapshot(self) -> FleetSnapshot:
        """The fleet as the metrics report it at a scrape."""
        queued, pending = self.dispatcher.counts()
        return FleetSnapshot(
            online=[(r.agent_id, r.telemetry) for r in self.registry.agents() if r.online],
            plan_epoch=self.planner.epoch,
            queued=queued,
            pending=pending,
            active=self.active,
            durable=self.ledger.durable,
            rejected=dict(self.rejected),
        )

    @property
    def active(self) -> bool:
        """Whether this controller may act now: elected, resumed on this connection, and its
        lease fresh (its link confirmed within the lease). Everything that dispatches,
        answers, fails, plans or reports checks this, so a controller that was frozen or cut
        off does nothing on its stale belief that it leads."""
        if not self._serving:
            return False
        if self.leader and self._linked():
            return True
        self._suspend()  # whoever sees it stale first: _fence resumes once it is fresh again
        return False

    def _suspend(self) -> None:
        with self._lock:
            if not self._serving:
                return
            self._serving = False
        log.warning(
            "controller %s: no word from the broker within %.1f s (or not leading): holding "
            "every answer and plan until it confirms the link",
            self.controller_id,
            self.lease.length_s,
        )

    def _linked(self) -> bool:
        """The broker confirmed this connection within the lease (a probe echoed)."""
        return self.bus.connected and self.lease.fresh(time.monotonic(), self.bus.connects)

    # -- lifecycle ----------------------------------------------------------------------

    def _status(self, state: str) -> ControllerStatus:
        queued, pending = self.dispatcher.counts()
        return ControllerStatus(
            controller_id=self.controller_id,
            state=state,  # type: ignore[arg-type]
            role="active" if self.leader and state == "online" else "standby",
            since_s=self.since_s,
            incarnation=self.incarnation,
            term=self.term or None,
            version=__version__,
            time_s=now_s(),
            agents_online=len(self.registry.online_experts()),
            requests_answered=self.answered,
            queued=queued,
            pending=pending,
            late_results=self.dispatcher.late_results,
            rejected=dict(self.rejected),
            plan_problem=self.adaptation.problem if state == "online" else None,
            gate=gate_state(self.router.selection),
            durable=self.ledger.durable,
            state_problem=self.ledger.state_problem,
            config_id=self.config.held_id,
            config_problem=self.config.problem,
        )

    def start(self, wait_s: float = 0.0) -> None:
        """Subscribe and connect (retrying an unreachable broker in the background); with
        ``wait_s``, wait that long for the first connection."""
        me = {"controller_id": self.controller_id}
        self.bus.set_will(topics.CONTROLLER_STATUS, self._status("offline"), **me)
        self.bus.subscribe(topics.AGENT_STATUS, self._on_status, on_empty=self._on_forget)
        self.bus.subscribe(topics.AGENT_CAPABILITIES, self._on_capabilities)
        self.bus.subscribe(topics.AGENT_TELEMETRY, self._on_telemetry)
        self.bus.subscribe(topics.AGENT_RESULTS, self._on_result)
        self.bus.subscribe(topics.AGENT_STREAM, self._on_stream)
        for prompt_topic in (topics.PROMPTS, topics.CLIENT_PROMPTS):
            self.bus.subscribe(prompt_topic, self._on_prompt, on_invalid=self._on_invalid_prompt)
        for text_topic in (topics.PROMPTS_TEXT, topics.CLIENT_PROMPTS_TEXT):
            self.bus.subscribe(text_topic, self._on_text_prompt)
        for cancel_topic in (topics.PROMPTS_CANCEL, topics.CLIENT_PROMPTS_CANCEL):
            self.bus.subscribe(cancel_topic, self._on_prompt_cancel)
        self.bus.subscribe(topics.ANSWERS, self._on_answer)
        self.bus.subscribe(topics.CONTROLLER_STATUS, self._on_peer)
        self.bus.subscribe(topics.CONTROLLER_PLAN, self._on_fleet_plan)
        self.bus.subscribe(topics.CONTROLLER_COSTS, self._on_peer_costs)
        self.bus.subscribe(
            topics.CONTROLLER_CONFIG, self._on_config, on_empty=lambda p: self.config.cleared()
        )
        self.bus.subscribe(topics.CONTROLLER_CONFIG_BLOBS, self._on_config_chunk)
        self.bus.subscribe(
            topics.CONTROLLER_BUDGETS, self._on_budgets, on_empty=self._on_budgets_cleared
        )
        self.bus.subscribe(
            topics.CONTROLLER_CACHE_PLAN, self._on_cache_plan, on_empty=self._on_cache_plan_lifted
        )
        if self.metrics_listen is not None:
            host, port = self.metrics_listen
            try:
                self.metrics.serve(host, port)
            except OSError as exc:
                raise ConnectionError(f"cannot serve metrics on {host}:{port}: {exc}") from None
        self.bus.start()
        thread = threading.Thread(target=self._watch, name="controller-watch", daemon=True)
        thread.start()
        self._threads.append(thread)
        self._threads.append(self.adaptation.start())
        log.info(
            "controller %s started for fleet %s on %s (ledger %s)",
            self.controller_id,
            self.settings.fleet,
            self.settings.endpoint.url,
            self.ledger.path,
        )
        if wait_s > 0 and not self.bus.wait_connected(wait_s):
            log.warning("broker %s not reachable yet; retrying", self.settings.endpoint.url)

    def stop(self) -> None:
        """Stop for good. Prompts in flight stay in the ledger: a restart of this controller,
        or the standby taking over, answers them."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._adapt_stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._lock:
            self.leader = self._serving = False
        if self.bus.connected:
            me = {"controller_id": self.controller_id}
            self.bus.publish(
                topics.CONTROLLER_STATUS, self._status("offline"), **me
            ).wait_for_publish(2)
        self.bus.close()
        self.ledger.close()
        self.identity.release()
        self.metrics.close()

    def wait(self) -> None:
        self._stop.wait()

    def publish_status(self) -> None:
        """Our status, which is also the lease's probe: its echo renews the lease."""
        status = self._status("online")
        self.lease.probe(status.time_s, time.monotonic(), self.bus.connects)
        self.bus.publish(topics.CONTROLLER_STATUS, status, controller_id=self.controller_id)

    def _on_connected(self, session_present: bool) -> None:
        """Every (re)connect: say we are here. After a dropped connection a leader leads no
        more until elected again: another controller may have taken over meanwhile. What it
        had published that the broker never acknowledged is taken back from paho (which would
        send it now): answers are kept until the election says whether they still go out,
        everything else is made again by whoever leads."""
        with self._lock:
            now = self._connected_at = time.monotonic()
            self.registry.heard_all(now)  # silence counts only while we hear the broker
            if self.bus.connects > 1:
                fleet = self.settings.fleet
                held = [m for m in self.bus.take_outgoing() if is_answer(m.topic, fleet)]
                if self.leader:
                    self._held_answers, self._held_answers_term = held, self.term
                if self.leader or self._serving:
                    log.warning(
                        "controller %s reconnected: stands by until elected again (%d answers "
                        "held)",
                        self.controller_id,
                        len(self._held_answers),
                    )
                self.leader = self._serving = False
                self.dispatcher.drop_all()
                self._damper.forget_all()  # the moves it saw were its own absence
                if not session_present:  # a broker that lost its state: hear its config again
                    self.config.cleared()
        self.publish_status()

    def _watch(self) -> None:
        last_status = last_expiry = time.monotonic()
        while not self._stop.wait(0.1):
            try:
                self._check_clock()
                self._elect()
                self._fence()
                self._sync_config()
                if self._linked():  # silence is measured only while the broker hears us
                    for change in self.registry.sweep():
                        self._on_change(change)
                self._replan_if_due()
                if self.active:
                    self._execute(self.dispatcher.tick(time.monotonic()))
                elif time.monotonic() - last_expiry >= 1.0:  # a scan of every shadowed prompt
                    last_expiry = time.monotonic()
                    self.ledger.expire()
                now = time.monotonic()
                if self.lease.due(now) or now - last_status >= self.settings.status_interval_s:
                    last_status = now
                    if self.bus.connected:
                        self.publish_status()  # the lease's probe
            except Exception:  # the watch loop must outlive any one bad step
                log.exception("controller watch step failed")

    def _check_clock(self) -> None:
        """A gap in our own clock (this process was frozen): agents' silence restarts now."""
        now = time.monotonic()
        if now - self._last_tick > CLOCK_GAP_S:
            gap_s = now - self._last_tick
            log.warning("controller %s did not run for %.1f s", self.controller_id, gap_s)
            self.registry.heard_all(now)
        self._last_tick = now

    def _fence(self) -> None:
        """Stop acting the moment the lease is stale; resume once it is fresh again (on the
        same connection, or after winning an election)."""
        with self._lock:
            fresh = self.leader and self._linked()
            if fresh and not self._serving:
                self._resume()
            elif not fresh:
                self._suspend()

    # -- leadership ---------------------------------------------------------------------

    def _on_peer(self, inbound: Inbound[ControllerStatus]) -> None:
        status = inbound.message
        if inbound.params.get("controller_id") != status.controller_id:
            self._on_reject(topics.CONTROLLER_STATUS, inbound.topic, "payload names another id")
            return
        if status.controller_id == self.controller_id:
            self.lease.echoed(status.time_s, self.bus.connects)  # our probe, back
            return
        with self._lock:
            self._peers[status.controller_id] = status
            self._see_term(status.term)

    def _see_term(self, term: int | None) -> None:
        self._seen_term = max(self._seen_term, term or 0)

    def _elect(self) -> None:
        with self._lock:
            if self._connected_at is None or not self.bus.connected:
                return
            if time.monotonic() - self._connected_at < self.settings.election_grace_s:
                return  # hear the retained statuses of the others first
            lead = should_lead(self._status("online"), list(self._peers.values()))
            if lead == self.leader:
                return
            self.leader = lead
            if lead:  # acting starts in _fence, once this status has come back (the lease)
                self.term = next_term([self.term, self._seen_term])
                self.planner.term, self._new_term = self.term, True
            else:
                self._serving = False
                self.dispatcher.drop_all()
                self._held_answers = []
        self.publish_status()
        if not lead:
            log.warning(
                "controller %s steps down: another controller is active", self.controller_id
            )

    def _resume(self) -> None:
        """Start acting as the leader (called with the lock held, so no prompt slips between
        the ledger and the dispatcher): after an election won, a takeover under the new term
        (plans for every agent, then the answers held from before a dropped connection if no
        one led in between, then every prompt the ledger holds unanswered); after a renewed
        lease on the same connection (no one can have taken over: our will never fired), the
        jobs still out again, and the prompts that came while the lease was stale."""
        takeover, self._new_term = self._new_term, False
        now = time.monotonic()
        self.registry.heard_all(now)
        self._serving = True
        waiting = [
            e for e in self.ledger.entries.values() if self.dispatcher.holds(e.request_id) is None
        ]
        if takeover:
            self._event(
                "takeover",
                f"controller {self.controller_id} is active (term {self.term}); "
                f"{len(waiting)} prompts to answer",
            )
            log.info(
                "controller %s active, term %d; %d prompts from the ledger",
                self.controller_id,
                self.term,
                len(waiting),
            )
            self.adaptation.carry_peer_costs()
            self._release_held_answers()
        else:
            log.info("controller %s: link confirmed, acting again", self.controller_id)
        self.replan(force=takeover)
        for record in self.registry.agents():
            if not record.online:  # gone while we were not acting: its jobs go elsewhere
                reason = f"agent {record.agent_id} is offline"
                self._execute(self.dispatcher.on_agent_down(record.agent_id, reason, now))
        self._execute(self.dispatcher.resend())
        for entry in sorted(waiting, key=lambda e: e.received_s):
            if self.dispatcher.holds(entry.request_id) is None:
                self._execute(self.dispatcher.admit(entry, time.monotonic(), now_s()))

    def _release_held_answers(self) -> None:
        """Answers the broker never acknowledged before our connection dropped go out now if
        no controller led in between (our new term follows the one they were sent under);
        otherwise the one that led answered those prompts from its own ledger."""
        held, term = self._held_answers, self._held_answers_term
        self._held_answers, self._held_answers_term = [], None
        if not held:
            return
        if term is not None and self.term == term + 1:
            log.info("controller %s: sending %d answers held", self.controller_id, len(held))
            for message in held:
                self.bus.republish(message)
        else:
            log.info(
                "controller %s: dropping %d answers held: another controller led since",
                self.controller_id,
                len(held),
            )

    # -- executing decisions ------------------------------------------------------------

    def _execute(self, actions: Actions) -> None:
        """Publish what the dispatcher decided, while we may act; otherwise nothing: the
        prompts stay in the ledger (an answer not sent is not marked done) and the jobs are
        sent again when we act again."""
        if not self.active:
            return
        for result in actions.results:
            self.metrics.result(result)
        term = {"term": self.term}
        for agent_id, job in actions.jobs:
            self._publish(topics.AGENT_JOBS, job.model_copy(update=term), agent_id=agent_id)
        for agent_id, cancel in actions.cancels:
            self._publish(topics.AGENT_CANCEL, cancel.model_copy(update=term), agent_id=agent_id)
        for event in actions.events:
            self._event(**event)
        for answer, routes in actions.answers:
            answer = self.adaptation.noted(answer)  # an expert being profiled says how far
            self.metrics.answered(answer)
            self._end_stream(answer, routes)
            self._send(answer, routes)

    def _event(self, kind: str, reason: str, **fields: Any) -> None:
        log.info("event %s: %s", kind, reason)
        if not self.active:
            return  # a standby stays quiet: the active controller reports
        event = ControllerEvent(time_s=now_s(), kind=kind, reason=reason, **fields)  # type: ignore[arg-type]
        self.bus.publish(topics.CONTROLLER_EVENTS, event)

    def _on_reject(self, topic: Topic[Any], name: str, reason: str) -> None:
        with self._lock:
            self.rejected[topic.pattern] += 1
        self._event("rejected", reason, topic=name)

    def _publish(self, topic: Topic[Any], message: Any, **params: str) -> bool:
        """Publish, or drop with an event what the broker would refuse (it would disconnect
        us, again at every retry)."""
        try:
            self.bus.publish(topic, message, **params)
        except PublishRefused as exc:
            self._event("rejected", f"not published on {topic.pattern}: {exc}")
            return False
        return True

    def _send(self, answer: Answer, routes: list[ReplyRoute], public: bool = True) -> None:
        """An answer to ``answers/{request_id}`` (unless not ``public``) and every reply route;
        the ledger forgets the prompt and remembers the answer (not a busy one: that asks for
        a retry). An answer too large to publish goes out as a failed one saying so."""
        if public:
            self.ledger.done(answer.request_id, None if answer.status == "busy" else answer)
            if not self._publish(topics.ANSWERS, answer, request_id=answer.request_id):
                answer = too_large(answer)
                self._publish(topics.ANSWERS, answer, request_id=answer.request_id)
        for route in routes:
            try:
                self.bus.publish_to(
                    route.topic,
                    as_asked(answer, route),
                    qos=topics.ANSWERS.qos,
                    correlation_data=route.correlation_data,
                )
            except PublishRefused as exc:
                self._event("rejected", f"answer {answer.request_id} not sent to a route: {exc}")

    # -- plans, budgets, cache plans ----------------------------------------------------

    def _on_change(self, change: Change) -> None:
        """An agent came or went: its jobs fail over at once; the re-plan waits for the
        window (controller/damping.py) so a burst of changes makes one."""
        kind = "agent_online" if change.online else "agent_offline"
        self._event(kind, f"agent {change.agent_id}: {change.reason}", agent_id=change.agent_id)
        if self.active and not change.online:
            reason = f"agent {change.agent_id} went offline ({change.reason})"
            self._execute(self.dispatcher.on_agent_down(change.agent_id, reason, time.monotonic()))
        self._replan_soon(change.agent_id)

    def _replan_soon(self, moved: str | None = None) -> None:
        """A re-plan at the end of the current window; ``moved``: an agent that went online
        or offline, counted towards holding it out as flapping."""
        now = time.monotonic()
        with self._lock:
            self._replans.note(now)
            held = moved is not None and self._damper.transition(moved, now)
        if held:
            settings = self.settings
            self._event(
                "replan",
                f"agent {moved} went online or offline {settings.flap_limit} times within "
                f"{settings.flap_window_s:g} s: held out of the plan until steady for "
                f"{settings.flap_steady_s:g} s",
                agent_id=moved,
            )

    def _replan_if_due(self) -> None:
        """From the watch loop: the coalesced re-plan once its window closed, and one when a
        held agent has been steady long enough to come back."""
        now = time.monotonic()
        with self._lock:
            release = self._damper.next_release()
            if release is not None:
                self._replans.at(release)
            self._damper.forget_quiet(now)
            due = self._replans.due(now)
        if due:
            self.replan()

    def replan(
        self,
        budgets: Budgets | None = None,
        force: bool = False,
        solved: SelectionResult | None = None,
    ) -> None:
        """Re-solve and, as the active controller, push plans; with new ``budgets``, adopt them
        only if a set fits (BudgetError otherwise). A selection that hit its time limit is
        published with its gap and improved in the background (``solved``: a better one)."""
        with self._lock:
            if solved is None:  # solve with the costs learnt so far
                costed = self.adaptation.before_replan(self.selection)
                if costed is not None:
                    self.selection = costed
            self._held = self._damper.held(time.monotonic())
            try:
                wanted, summary, result = wanted_experts(
                    self.registry,
                    self.selection,
                    self.cache_plan,
                    budgets or self.budgets,
                    solved,
                    self._held,
                )
            except BudgetError as exc:
                if budgets is not None:
                    raise
                if self.registry.online_experts():
                    self._event("replan", f"keeping the current plan: {exc}")
                return
            if budgets is not None:
                self.budgets = budgets
            if result is not None:
                self.last_selection = result
            if not self.active:
                return
            planned = self.planner.replan(wanted, force=force or budgets is not None, **summary)
        if result is not None and not result.optimal and solved is None:
            self._improve(result)
        if planned is None:
            return
        fleet_plan, agent_plans = planned
        for plan in agent_plans:
            self.bus.publish(topics.AGENT_PLAN, plan, agent_id=plan.agent_id)
        self._publish(topics.CONTROLLER_PLAN, fleet_plan)
        text = "; ".join(f"{a}: {', '.join(e) or '-'}" for a, e in fleet_plan.assignments.items())
        self._event("replan", f"epoch {fleet_plan.epoch}: {text or 'no agent online'}")

    def _improve(self, first: SelectionResult) -> None:
        """Keep searching, in time slices, for a better set than a re-plan's time-limited one,
        and publish each better one; stop when it is proven optimal, after IMPROVE_SLICES, or
        when the fleet or the budgets change (the next re-plan starts again)."""
        if self._improver is not None and self._improver.is_alive():
            return
        held = set(self._held)
        selection, budgets = self.selection, self.budgets
        keys = online_keys(self.registry, held)
        assert selection is not None

        def run() -> None:
            best = first
            for _ in range(IMPROVE_SLICES):
                if self._stop.is_set() or not self.active:
                    return
                if self.budgets != budgets or online_keys(self.registry, held) != keys:
                    return
                if self.selection is not selection:
                    return  # costs or the gate changed: the next re-plan starts again
                better = selection.improve(budgets, keys, best, time_limit_s=IMPROVE_SLICE_S)
                if better is None:
                    continue
                best = better
                gap = "optimal" if best.optimal else f"gap {best.gap:.3f}"
                log.info("selection improved in the background: loss %.4f, %s", best.loss, gap)
                self.replan(solved=best)
                if best.optimal:
                    return

        self._improver = threading.Thread(target=run, name="selection-improver", daemon=True)
        self._improver.start()

    def _on_fleet_plan(self, inbound: Inbound[FleetPlan]) -> None:
        self.planner.observe(inbound.message.epoch)
        with self._lock:
            self._see_term(inbound.message.term)

    def _on_budgets(self, inbound: Inbound[Budgets]) -> None:
        self._retained_budgets = inbound.message  # in force again after adopting a config
        if inbound.message == self.budgets:
            return  # our own retained budgets, seen again
        if self.selection is None:
            self._on_reject(
                topics.CONTROLLER_BUDGETS,
                inbound.topic,
                "budgets need a selection: start the controller with a profile and a gate",
            )
            return
        try:
            self.replan(inbound.message)
        except BudgetError as exc:
            self._on_reject(
                topics.CONTROLLER_BUDGETS, inbound.topic, f"{exc}; keeping the last good plan"
            )

    def _on_budgets_cleared(self, params: dict[str, str]) -> None:
        """``moe2 budgets --clear``: back to the budgets this controller was started with."""
        self._retained_budgets = None
        if self.budgets == self.configured_budgets:
            return
        self._event("replan", "budgets cleared: back to the configured budgets")
        try:
            self.replan(self.configured_budgets)
        except BudgetError as exc:
            self._event("replan", f"configured budgets do not fit: {exc}")

    def _on_cache_plan(self, inbound: Inbound[CachePlan]) -> None:
        plan = inbound.message
        if plan == self.cache_plan:
            return  # our own retained plan, seen again
        if not plan.placement:
            self._on_cache_plan_lifted({})
            return
        problem = cache_plan_problem(self.registry, plan)
        if problem is not None:
            self._on_reject(
                topics.CONTROLLER_CACHE_PLAN, inbound.topic, f"{problem}; keeping the current plan"
            )
            return
        self.cache_plan = plan
        self.replan(force=True)

    def _on_cache_plan_lifted(self, params: dict[str, str]) -> None:
        if self.cache_plan is not None:
            self.cache_plan = None
            self._event("replan", "cache plan lifted")
            self.replan(force=True)

    # -- the fleet's configuration (controller/config_sync.py) -----------------------------

    def _on_config(self, inbound: Inbound[FleetConfig]) -> None:
        self._config_step(self.config.on_config(inbound.message, time.monotonic()))

    def _on_config_chunk(self, inbound: Inbound[ConfigChunk]) -> None:
        chunk = inbound.message
        where = (inbound.params.get("digest"), inbound.params.get("index"))
        if where != (chunk.sha256, str(chunk.index)):
            self._on_reject(
                topics.CONTROLLER_CONFIG_BLOBS, inbound.topic, "payload names another chunk"
            )
            return
        self._config_step(self.config.on_chunk(chunk, time.monotonic()))

    def _on_peer_costs(self, inbound: Inbound[CostTable]) -> None:
        self._peer_costs = inbound.message  # kept for a live-cost loop made at adoption
        self.adaptation.on_peer_costs(inbound.message)

    def _config_step(self, step: Step) -> None:
        """Say what the configuration sync reports (a standby too: why it may not lead), and
        load a fetched configuration off the MQTT thread."""
        if step.report is not None:
            self._config_event(step.report)
        if step.ready is not None:
            thread = threading.Thread(
                target=self._adopt, args=(step.ready,), name="config-adopt", daemon=True
            )
            thread.start()

    def _config_event(self, reason: str | None) -> None:
        if reason is None:
            return
        log.warning("controller %s: %s", self.controller_id, reason)
        if self.bus.connected:
            event = ControllerEvent(time_s=now_s(), kind="config", reason=reason)
            self.bus.publish(topics.CONTROLLER_EVENTS, event)
            self.publish_status()  # the problem (or its end) in our status at once

    def _adopt(self, ready: Ready) -> None:
        """Put the fleet's configuration in force: its settings, budgets (the retained ones
        where they fit), selection, and a live-cost loop for it (carrying the peer's costs)."""
        settings = adopted_settings(self.settings, ready.config, ready.profile, ready.gate)
        budgets = configured_budgets(settings)
        try:
            selection = _configured_selection(
                settings, budgets, lambda said: self._event("gate", said)
            )
            held = LocalConfig.of_files(ready.config, ready.profile, ready.gate)
        except Exception as exc:  # a profile of another fleet, budgets that fit nothing...
            self._config_event(self.config.install_failed(ready.config, str(exc)))
            return
        with self._lock:
            if not self.config.installed(held):
                return  # the fleet moved on to another configuration meanwhile
            self.settings, self.configured_budgets = settings, budgets
            self.router.selection, self.router.budgets = selection, budgets
            retained = self._retained_budgets
            if retained is not None and retained != budgets:
                try:
                    selection.check(retained)
                    self.router.budgets = retained
                except BudgetError as exc:
                    log.warning("retained budgets do not fit the fleet's configuration: %s", exc)
            self._adapt_stop.set()  # the loop of the configuration before ends
            self._adapt_stop = threading.Event()
            self.adaptation = Adaptation(self._loop_links())
            self.router.no_expert_reason = self.adaptation.no_expert_reason
            self.dispatcher.observer = self.adaptation
            if self._peer_costs is not None:
                self.adaptation.on_peer_costs(self._peer_costs)
        self._threads.append(self.adaptation.start())
        self._config_event(f"adopted the fleet's {describe(ready.config)}")
        self._replan_soon()

    def _sync_config(self) -> None:
        """From the watch loop: report a fetch that is late; publish our configuration when we
        lead and the fleet has none (or replace the fleet's, when told to), after the
        election's grace (the retained one has been heard by then)."""
        self._config_step(self.config.tick(time.monotonic()))
        connected_at = self._connected_at
        if connected_at is None or not self.bus.connected:
            return
        if time.monotonic() - connected_at < self.settings.election_grace_s:
            return
        held = self.config.to_publish(self.active)
        if held is None:
            return
        chunks, config = held.publication(self.controller_id)
        for chunk in chunks:
            where = {"digest": chunk.sha256, "index": str(chunk.index)}
            self.bus.publish(topics.CONTROLLER_CONFIG_BLOBS, chunk, **where)
        self.bus.publish(topics.CONTROLLER_CONFIG, config)
        log.info("controller %s published the fleet's %s", self.controller_id, describe(config))

    # -- fleet topics -------------------------------------------------------------------

    def _agent_matches_topic(self, inbound: Inbound[Any], agent_id: str) -> bool:
        if inbound.params.get("agent_id") == agent_id:
            return True
        self._on_reject(
            topics.AGENT_STATUS, inbound.topic, f"payload names agent {agent_id!r}, topic another"
        )
        return False

    def _on_status(self, inbound: Inbound[AgentStatus]) -> None:
        status = inbound.message
        if not self._agent_matches_topic(inbound, status.agent_id):
            return
        change = self.registry.on_status(status)
        if change is not None:
            self._on_change(change)
        if status.state == "online" and self.active:
            # An agent announces itself at every connect: it may have missed its plan and jobs
            # (one back within the re-plan window still has its place in the plan).
            plan = self.planner.plan_for(status.agent_id)
            if plan is not None:
                self.bus.publish(topics.AGENT_PLAN, plan, agent_id=status.agent_id)
            self._execute(self.dispatcher.resend(status.agent_id))

    def _on_forget(self, params: dict[str, str]) -> None:
        """A retained status cleared: the agent is forgotten until it is heard from again (its
        telemetry or a result brings it back; a running agent also announces itself again)."""
        agent_id = params.get("agent_id")
        if agent_id and self.registry.forget(agent_id):
            self._event("agent_offline", f"agent {agent_id} forgotten", agent_id=agent_id)
            if self.active:
                reason = f"agent {agent_id} was forgotten"
                self._execute(self.dispatcher.on_agent_down(agent_id, reason, time.monotonic()))
            self._replan_soon(agent_id)

    def _on_capabilities(self, inbound: Inbound[AgentCapabilities]) -> None:
        if not self._agent_matches_topic(inbound, inbound.message.agent_id):
            return
        self.registry.on_capabilities(inbound.message)
        self._replan_soon()

    def _on_telemetry(self, inbound: Inbound[Telemetry]) -> None:
        telemetry = inbound.message
        if not self._agent_matches_topic(inbound, telemetry.agent_id):
            return
        record = self.registry.get(telemetry.agent_id)
        first = record is None or record.telemetry is None  # heard alive now: plannable
        change = self.registry.on_telemetry(telemetry)
        if change is not None:
            self._on_change(change)
        elif first:
            self._replan_soon()
        if telemetry.plan_epoch is not None:
            self.planner.observe(telemetry.plan_epoch)  # our epochs start above the agents'
        with self._lock:
            self._see_term(telemetry.plan_term)
        if self.active:
            self._above_agents_term(telemetry)
            self._resync_plan(telemetry)

    def _above_agents_term(self, telemetry: Telemetry) -> None:
        """An agent holding a plan of a higher term than ours, from no controller online (one
        gone while the broker forgot its status): it would refuse our plans and jobs, so we
        lead on under a term above it, with plans and the jobs out sent again."""
        held = telemetry.plan_term or 0
        with self._lock:
            if held <= self.term or any(
                (p.term or 0) >= held for p in self._peers.values() if p.state == "online"
            ):
                return  # ours, or an online controller's: the election settles that
            self.term = self.planner.term = next_term([self.term, self._seen_term])
        log.warning(
            "agent %s holds a plan of term %d: leading on under term %d",
            telemetry.agent_id,
            held,
            self.term,
        )
        self.publish_status()
        self.replan(force=True)
        self._execute(self.dispatcher.resend())

    def _resync_plan(self, telemetry: Telemetry) -> None:
        """An agent that holds another plan than the one it was sent (a forged or stray plan,
        one lost with a broker) gets its plan again, at most every RESYNC_S."""
        agent = telemetry.agent_id
        sent = self.planner.agent_epochs.get(agent)
        if sent is None or telemetry.plan_epoch == sent:
            return
        now = time.monotonic()
        if now - self._resynced.get(agent, -RESYNC_S) < RESYNC_S:
            return
        self._resynced[agent] = now
        plan = self.planner.plan_for(agent)
        if plan is not None:
            log.info(
                "agent %s holds plan epoch %s, not %s: sent again",
                agent,
                telemetry.plan_epoch,
                sent,
            )
            self.bus.publish(topics.AGENT_PLAN, plan, agent_id=agent)

    def _on_result(self, inbound: Inbound[JobResult]) -> None:
        result = inbound.message
        if not self._agent_matches_topic(inbound, result.agent_id):
            return
        change = self.registry.heard(result.agent_id)  # a forgotten agent is back
        if change is not None:
            self._on_change(change)
        if not self.active:
            return
        # the dispatcher hands the live-cost loop what it learns from, and its probes' results
        actions, refusal = self.dispatcher.on_result(result, time.monotonic())
        if refusal is not None:
            self._on_reject(topics.AGENT_RESULTS, inbound.topic, refusal)
        self._execute(actions)

    def _on_stream(self, inbound: Inbound[StreamChunk]) -> None:
        """Relay the tokens of the expert that leads a streamed prompt (the highest gate
        weight; among equals, the first to stream) to answers/{request_id}/stream and to
        each reply route's topic + /stream, while the prompt is pending."""
        chunk = inbound.message
        if not self._agent_matches_topic(inbound, chunk.agent_id) or not self.active:
            return
        if chunk.final:
            return  # only this controller ends a stream
        leaders = self.dispatcher.stream_leaders(chunk.request_id)
        if leaders is None:
            return
        pairs, routes = leaders
        pair = (chunk.agent_id, chunk.expert_id)
        with self._lock:
            lead, after = self._stream_leads.get(chunk.request_id, (None, 0))
            if (lead is None or lead not in pairs) and pair in pairs:
                lead, after = pair, 0
            if pair != lead:
                return
            self._stream_leads[chunk.request_id] = (pair, max(after, chunk.seq + 1))
        self._relay_stream(chunk, routes)

    def _end_stream(self, answer: Answer, routes: list[ReplyRoute]) -> None:
        """A stream relayed for this answer's prompt ends, just before the answer, with a final
        chunk: done, naming the experts the answer came from (they may not be the expert whose
        tokens were relayed)."""
        with self._lock:
            relayed = self._stream_leads.pop(answer.request_id, None)
        if relayed is not None:
            pair, seq = relayed
            self._relay_stream(StreamChunk.ending(answer, pair, seq, now_s()), routes)

    def _relay_stream(self, chunk: StreamChunk, routes: list[ReplyRoute]) -> None:
        """``chunk`` to answers/{request_id}/stream and to each reply route's topic + /stream."""
        self.bus.publish(topics.ANSWER_STREAM, chunk, request_id=chunk.request_id)
        for route in routes:
            try:
                self.bus.publish_to(
                    route.topic + "/stream",
                    as_asked(chunk, route),
                    qos=topics.ANSWER_STREAM.qos,
                    correlation_data=route.correlation_data,
                )
            except Exception as exc:  # a preview lost is not worth more than a log line
                log.warning("stream of %s not relayed to %s: %s", chunk.request_id, route, exc)

    # -- prompts ------------------------------------------------------------------------

    def _on_prompt(self, inbound: Inbound[Prompt]) -> None:
        asked = (inbound.response_topic, inbound.message.reply_to)
        self.accept(self._arrival(inbound, inbound.message, asked), inbound.topic)

    def _on_text_prompt(self, inbound: Inbound[str]) -> None:
        prompt = Prompt(prompt=inbound.message, timeout_s=self.settings.default_timeout_s)
        self.accept(self._arrival(inbound, prompt, (inbound.response_topic,)), inbound.topic)

    def _arrival(
        self, inbound: Inbound[Any], prompt: Prompt, asked: tuple[str | None, ...]
    ) -> Arrival:
        owner = inbound.params.get("client_id")
        return arrive(prompt, asked, inbound.correlation_data, owner, self.settings.fleet)

    def _on_invalid_prompt(self, inbound: Inbound[bytes], reason: str) -> None:
        """A prompt that failed validation: its sender hears why on whatever route it gave
        that passes the checks (the MQTT 5 response topic, a readable ``reply_to``, and
        ``answers/{request_id}`` for a valid request id)."""
        if not self.active:
            return
        owner = inbound.params.get("client_id")
        raw = loose_json(inbound.message)
        reply_to = raw.get("reply_to") if isinstance(raw.get("reply_to"), str) else None
        asked = (inbound.response_topic, reply_to)
        routes, refused = reply_routes(asked, inbound.correlation_data, self.settings.fleet, owner)
        for why in refused:
            self._on_reject(topics.PROMPTS, inbound.topic, why)
        request_id = raw.get("request_id")
        valid_id = isinstance(request_id, str) and TOPIC_LEVEL_RE.fullmatch(request_id)
        answer = refusal(request_id if valid_id else "invalid", f"invalid prompt: {reason}")
        if owner is not None and valid_id:
            name = topics.REPLIES.name(self.settings.fleet, client_id=owner, request_id=request_id)
            routes.append(ReplyRoute(name, inbound.correlation_data))
        # answers/{request_id} is the shared namespace: a login's ids are its own (request_ids)
        public = owner is None and bool(valid_id) and not self.ledger.entries.get(request_id)
        self._send(answer, routes, public=public)

    def accept(self, arrival: Arrival, topic: str) -> str:
        """Take a prompt (as controller/intake.py made it, from ``topic``) into the ledger
        and, as the active controller, into the dispatcher; returns the controller's key.

        The same prompt delivered again (same content and reply routes: an MQTT redelivery, an
        asker re-sending after a reconnect) joins the one in flight, or gets the answer already
        sent; a prompt without a request id gets one derived from its content for that reason.
        A different prompt (other content or routes) under a request id in flight or answered
        (among the answers the ledger remembers) is refused ``rejected`` to its own routes
        only: a request id names one prompt, and never gets another's result. A prompt from a
        login's own topic is kept under its id scoped by the login (one login's ids are never
        another's), answered under ``replies/{login}/`` when it names no route, with the id it
        sent; one whose route was refused, or too large to hand to an agent, is answered
        ``rejected`` with the reason.
        """
        for why in arrival.refused:
            self._on_reject(topics.PROMPTS, topic, why)
        request_id, problem = arrival.request_id, arrival.problem
        if problem:
            if self.active:
                self.rejected[topics.PROMPTS.pattern] += 1
                self._event("rejected", f"request {request_id}: {problem}", topic="prompts")
                self._send(
                    refusal(request_id, problem),
                    arrival.routes,
                    public=request_id not in self.ledger.entries,
                )
            return request_id
        entry = self._into_ledger(arrival)
        if entry is not None:
            self._execute(self.dispatcher.admit(entry, time.monotonic(), now_s()))
        return request_id

    def _into_ledger(self, arrival: Arrival) -> Entry | None:
        """The ledger's new entry for the prompt, for the dispatcher; None when it is another
        delivery of one held or answered, a reused id, or a standby's shadow."""
        request_id, routes, mark = arrival.request_id, arrival.routes, arrival.fingerprint
        with self._lock:
            bound = self.ledger.bound(request_id)
            if bound is not None and bound[0] != mark:
                if self.active:
                    self._refuse_reused(request_id, arrival.asked_id, bound[1], routes)
                return None
            held = self.ledger.entries.get(request_id)
            if held is not None:
                held.add_routes(routes)
                return None
            earlier = self.ledger.answered(request_id, mark)
            if earlier is not None:  # answered: again to the asker, never a shadow to re-answer
                if self.active:
                    self._send(earlier, routes)
                return None
            entry = Entry(
                request_id=request_id,
                prompt=arrival.prompt.model_copy(update={"request_id": request_id}),
                routes=routes,
                received_s=now_s(),
                fingerprint=mark,
            )
            self.ledger.add(entry)
            if not self.active:
                return None  # a standby's shadow: answered by the active controller
        return entry

    def _refuse_reused(
        self, request_id: str, asked_id: str, state: str, routes: list[ReplyRoute]
    ) -> None:
        """Another prompt under an id that names one in flight or answered: ``rejected`` on
        its own routes only (answers/{request_id} is the first prompt's)."""
        self.rejected[topics.PROMPTS.pattern] += 1
        reason = (
            f"request id {asked_id!r} is already in use by another prompt ({state}): "
            "send this one under a fresh request id"
        )
        self._event("rejected", reason, topic="prompts", request_id=request_id)
        self._send(refusal(request_id, reason), routes, public=False)

    def _on_prompt_cancel(self, inbound: Inbound[PromptCancel]) -> None:
        """An asker that no longer wants its answer (it went away): the prompt's jobs are
        cancelled on their agents, it is answered ``failed`` (``cancelled by the asker``) and
        forgotten, so no takeover runs it again; a standby only forgets it. A cancel for a
        prompt not held (unknown, answered) changes nothing; one from a login for another
        login's prompt is refused."""
        cancel, owner = inbound.message, inbound.params.get("client_id")
        key = scoped_id(owner, cancel.request_id)  # a login cancels under the id it sent
        with self._lock:
            entry = self.ledger.entries.get(key)
            if entry is None:
                return
            if not may_cancel([r.topic for r in entry.routes], owner, self.settings.fleet):
                why = f"request {cancel.request_id} is not a prompt of login {owner!r}"
                self._on_reject(topics.CLIENT_PROMPTS_CANCEL, inbound.topic, why)
                return
            if not self.active:
                self.ledger.done(key)
                return
        reason = cancelled_reason(cancel.reason)
        self._execute(self.dispatcher.withdraw(entry, reason, time.monotonic()))

    def _on_answer(self, inbound: Inbound[Answer]) -> None:
        """Answers on the bus: a standby forgets the prompts the active controller answered."""
        answer = inbound.message
        if not self.active:
            self.ledger.done(answer.request_id, None if answer.status == "busy" else answer)


def _configured_selection(
    settings: ControllerSettings, budgets: Budgets, report: Callable[[str], None]
) -> LiveSelection | None:
    """The MoE² selection of the configured profile and gate (checked against the fleet and
    the budgets), or None without them. Its prompt encoder loads in the background: prompts are
    weighted equally until it is ready, and ``report`` says so (controller/gate/encoder_loader)."""
    if settings.profile is None or settings.gate is None:
        return None
    from controller.selection.from_profile import load_gated_profile  # needs torch
    from controller.selection.live import LiveSelection

    selection = LiveSelection(
        load_gated_profile(settings.profile, settings.gate),
        aggregation_delay_s=settings.aggregation_delay_s,
        time_limit_s=settings.selection_time_limit_s,
    )
    selection.gated.profile.check_fleet(settings.fleet)
    selection.check(budgets)
    start_loading(report)
    return selection
