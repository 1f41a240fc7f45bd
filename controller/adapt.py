"""MoE² as a live loop inside the controller: costs learnt from results, re-plans on drift,
newcomers profiled and gated, the cost table published on ``controller/costs``.

The loop knows the controller only through ``LoopLinks``: what it reads (settings, the fleet
registry, the plan, the selection, the budgets, the load) and what it asks for (an event, a
re-plan, a retrained gate's selection installed, the cost table published, probe jobs sent as
``Actions`` that the service publishes on its one path for jobs). The service calls
``before_replan`` at every re-plan (it installs the selection, with the current costs, that
comes back); the dispatcher hands on every job result (``on_job_result``: a prompt's job and its
round trip; ``claim``: a result of no prompt, one of our probes), every job it cut without a
result (``on_job_cut``: a censored sample, see controller/costs.py) and every answer that ran
over its budgets (``on_over_budget``: re-plan with the costs learnt). ``loop`` runs in a thread.

Only the active controller sends probes, re-plans and publishes; a standby learns nothing (it
has no dispatch times): it keeps the last cost table the active one published and, when it
takes over, goes on from those costs where they are newer than the ones it saved itself
(``carry_peer_costs``), so a controller's crash does not plan back in an expert that the fleet
had found slow.

Probes: an online expert of the gate with no cost sample for ``probe_interval_s`` (one that the
plan leaves out gets no user prompts) is sent one training prompt of the profile, rotating
through the categories, when its agent has no user job out: this is how a slowed expert that
was planned away is seen to recover. A probe unanswered after ``probe_timeout_s`` counts as a
delay of at least that long (censored).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from controller.costs import CostModel, Seed, seeds_from_profile
from controller.dispatch import Actions
from controller.drift import DriftDetector, Move
from controller.explain import infeasible
from controller.registry import FleetRegistry
from controller.settings import ControllerSettings
from messages.answers import Answer
from messages.base import now_s
from messages.budgets import Budgets
from messages.costs import CostTable, ExpertCostRow
from messages.expert_key import ExpertOnAgent, agent_of, expert_key, parse_key
from messages.jobs import Job
from messages.results import JobResult

if TYPE_CHECKING:
    from controller.newcomers import NewcomerQueue, Progress
    from controller.profile import Profile
    from controller.selection.from_profile import ExpertCost, GatedProfile
    from controller.selection.live import LiveSelection
    from controller.suite import SuiteItem

log = logging.getLogger(__name__)

TICK_S = 0.25
PUBLISH_S = 2.0
SAVE_S = 10.0


@dataclass(frozen=True)
class LoopLinks:
    """What the live-cost loop reads from the controller and asks of it, and nothing more."""

    settings: ControllerSettings
    state_dir: Path  # where the costs and an extended gate are kept
    controller_id: str
    registry: FleetRegistry  # read: who is online, with which experts
    stopped: threading.Event  # the controller stopped: the loop ends
    active: Callable[[], bool]  # whether the controller may act now
    planned: Callable[[], Mapping[str, list[str]]]  # the plan in force: agent -> experts
    load: Callable[[], Mapping[str, int]]  # jobs out per agent
    selection: Callable[[], LiveSelection | None]  # the selection in force
    budgets: Callable[[], Budgets]  # the fleet's budgets in force
    install: Callable[[LiveSelection], None]  # put a selection (a retrained gate) in force
    replan: Callable[[bool], None]  # re-plan now (True: even if the set did not change)
    execute: Callable[[Actions], None]  # publish probe jobs, on the service's one path
    publish_costs: Callable[[CostTable], None]  # the cost table, while active and connected
    event: Callable[..., None]  # a controller event: (kind, reason, **fields)


@dataclass
class _Probe:
    key: str
    item: SuiteItem
    sent: float  # monotonic
    newcomer: bool


class Adaptation:
    def __init__(self, links: LoopLinks) -> None:
        """Restore the saved costs and, when an earlier run extended the gate for newcomers,
        install that gate (``links.install``)."""
        self.links = links
        s = links.settings
        self.path = state_costs_path(links.state_dir)
        self.drift = DriftDetector(s.drift_threshold, s.drift_cooldown_s)
        self.model: CostModel | None = None
        self.probes: dict[str, _Probe] = {}
        self.last_sample: dict[str, float] = {}
        self.problem: str | None = None
        self.newcomers: NewcomerQueue | None = None
        self._probe_turn = 0
        self._lock = threading.RLock()
        # the loop and the retraining thread both publish: one table at a time, so that a table
        # computed before a retrain never lands after the one computed after it
        self._publish_lock = threading.Lock()
        self._retraining = False
        self._peer_table: CostTable | None = None
        self._working: Profile | None = None
        self._suite_problem: str | None = None
        self._save_problem: str | None = None
        self._overrun: float | None = None  # when an answer last ran over its budgets
        selection = links.selection()
        if selection is None:
            return
        selection = self._adopt_extended(selection)
        gated = selection.gated
        self.model = CostModel(
            seeds_from_profile(gated.profile, gated.gate.expert_keys), window=s.cost_window
        )
        loaded = self.model.load(self.path)
        if loaded:
            log.info("live costs of %d experts restored from %s", loaded, self.path)
        self.drift.adopt(self._gate_costs())

    # -- the selection's costs ----------------------------------------------------------

    def _adopt_extended(self, selection: LiveSelection) -> LiveSelection:
        """A gate extended for newcomers by an earlier run, when it is whole and of this fleet,
        installed; the selection in force."""
        from controller.newcomers import extended_pair
        from controller.selection.from_profile import load_gated_profile

        pair = extended_pair(self.links.state_dir, self.links.settings.fleet)
        if pair is None:
            return selection
        try:
            gated = load_gated_profile(*pair)
        except Exception as exc:  # a damaged extension: the configured profile stands
            log.warning("ignoring the extended profile in %s: %s", pair[0].parent, exc)
            return selection
        if not set(selection.expert_keys) <= set(gated.gate.expert_keys):
            return selection
        log.info("using the gate extended for newcomers: %s", pair[1])
        extended = _rebuilt(selection, gated)
        self.links.install(extended)
        return extended

    def _gate_costs(self) -> dict[str, ExpertCost]:
        assert self.model is not None
        selection = self.links.selection()
        keys = set(selection.expert_keys) if selection else set()
        return {k: v for k, v in self.model.costs().items() if k in keys}

    def before_replan(self, selection: LiveSelection | None) -> LiveSelection | None:
        """Every re-plan solves with the current costs, and they become the drift reference:
        the selection to install with them (None: ``selection`` has them already)."""
        if self.model is None or selection is None:
            return None
        with self._lock:
            current = self._gate_costs()
            costs = {**selection.gated.costs, **current}
            costed = None
            if costs != selection.gated.costs:
                gated = replace(selection.gated, costs=costs)  # type: ignore[arg-type]
                costed = _rebuilt(selection, gated)
            self.drift.adopt(current, time.monotonic())
        return costed

    # -- results ------------------------------------------------------------------------

    def claim(self, result: JobResult, now: float) -> bool:
        """A result of no prompt in flight (from the dispatcher): True when it answers one of
        our probes, and then learnt from."""
        if self.model is None:
            return False
        probe = self.probes.pop(result.request_id, None)
        if probe is None:
            return False
        key = expert_key(result.agent_id, result.expert_id)
        if probe.key != key:
            return True
        self._learn(result, key, probe.item.category, now - probe.sent, now)
        if probe.newcomer:
            self._measured(probe, result, now - probe.sent)
        return True

    def on_job_result(
        self, result: JobResult, category: str | None, round_trip_s: float, now: float
    ) -> None:
        """A result of a prompt's job (from the dispatcher), ``round_trip_s`` after it went."""
        if self.model is None:
            return
        key = expert_key(result.agent_id, result.expert_id)
        self._learn(result, key, category, round_trip_s, now)

    def on_job_cut(
        self, pair: ExpertOnAgent, category: str | None, elapsed_s: float, now: float
    ) -> None:
        """A prompt's job cut with no result (left out by an early answer, or at the prompt's
        deadline) ``elapsed_s`` after it went: a censored sample, its delay at least that."""
        if self.model is None:
            return
        key = expert_key(*pair)
        if self.model.observe_cut(key, category, elapsed_s):
            self.last_sample[key] = now

    def on_over_budget(self, now: float) -> None:
        """An answer ran over a budget it was answered under: re-plan with the costs learnt
        so far at the next tick (at most once per drift cool-down)."""
        self._overrun = now

    def _learn(
        self, result: JobResult, key: str, category: str | None, round_trip: float, now: float
    ) -> None:
        assert self.model is not None
        lat = result.latency
        delay = max(0.0, round_trip - lat.queue_s - lat.load_s)
        energy = result.energy
        use_energy = energy is not None and lat.load_s < 0.05  # loading is no query's cost
        if not result.ok:
            error = result.error or ""
            if "deadline" not in error or "queue" in error:
                return  # an error says nothing about the expert's cost
            # cut off at its deadline: it would have taken at least this long (censored)
            if self.model.observe_cut(key, category, delay):
                self.last_sample[key] = now
            return
        learnt = self.model.observe(
            key,
            category,
            delay,
            energy.energy_j if use_energy and energy else None,
            energy.source if energy else None,
            energy.estimated if energy else True,
        )
        if learnt:
            self.last_sample[key] = now

    # -- the loop -----------------------------------------------------------------------

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.loop, name="controller-adapt", daemon=True)
        thread.start()
        return thread

    def loop(self) -> None:
        last_publish = last_save = 0.0
        while not self.links.stopped.wait(TICK_S):
            try:
                now = time.monotonic()
                if self.model is None or not self.links.active():
                    continue
                probes = Actions()
                self._probe(now, probes)
                self._newcomers(now, probes)
                self.links.execute(probes)
                moves = self.drift.due(self._gate_costs(), now, self._online_keys())
                if moves:
                    self._replan_for(moves)
                elif self._overrun is not None:
                    self._replan_for_overrun(now)
                if now - last_publish >= PUBLISH_S:
                    last_publish = now
                    self.publish()
                if now - last_save >= SAVE_S:
                    last_save = now
                    self._save()
            except Exception:  # the loop must outlive any one bad step
                log.exception("adaptation step failed")
        self._save()

    def _save(self) -> None:
        """Keep the live costs for a restart; a state folder that cannot take them (a full
        disk, a file in its place) costs one log line, not the loop."""
        if self.model is None:
            return
        try:
            self.model.save(self.path)
        except OSError as exc:
            if str(exc) != self._save_problem:
                log.warning("live costs not saved to %s (%s); trying again later", self.path, exc)
            self._save_problem = str(exc)
        else:
            self._save_problem = None

    def _online_keys(self) -> set[str]:
        return _keys(self.links.registry.online_experts())

    def _replan_for(self, moves: list[Move]) -> None:
        text = "; ".join(str(m) for m in moves[:6])
        more = f" (+{len(moves) - 6} more)" if len(moves) > 6 else ""
        self.links.event("drift", f"costs moved past ±{self.drift.threshold:.0%}: {text}{more}")
        self.links.replan(False)  # a new epoch only when the set changes
        self.publish()

    def _replan_for_overrun(self, now: float) -> None:
        """Answers ran over their budgets: solve again with the costs learnt so far (a new
        plan only when the set changes), no sooner than the cool-down after the last re-plan."""
        last = self.drift.last_replan
        if last is not None and now - last < self.drift.cooldown_s:
            return
        self._overrun = None
        self.drift.last_replan = now  # the cool-down also when the re-plan changes nothing
        self.links.replan(False)
        self.publish()

    def _probe(self, now: float, actions: Actions) -> None:
        """Time out the probes unanswered; add one for each expert due (to ``actions``)."""
        assert self.model is not None
        interval = self.links.settings.probe_interval_s
        timeout = self.links.settings.probe_timeout_s
        for request_id, probe in list(self.probes.items()):
            if now - probe.sent > timeout:
                self.probes.pop(request_id, None)
                if not probe.newcomer:  # no answer in that long: at least that long (censored)
                    self.model.observe_cut(probe.key, probe.item.category, now - probe.sent)
                    self.last_sample[probe.key] = now
                else:
                    self._measured(probe, None, now - probe.sent)
        selection = self.links.selection()
        if interval <= 0 or selection is None:
            return
        out = {p.key for p in self.probes.values()}
        load = self.links.load()
        items = [i for i in selection.gated.profile.items if i.split == "train"]
        if not items:
            return
        for key in sorted(self._online_keys() & set(self.model.seeds)):
            agent = agent_of(key)
            if key in out or load.get(agent, 0) > 0:
                continue
            if now - self.last_sample.setdefault(key, now) < interval:
                continue
            self._probe_turn += 1
            categories = sorted({i.category for i in items})
            category = categories[self._probe_turn % len(categories)]
            in_cat = [i for i in items if i.category == category]
            item = in_cat[(self._probe_turn // len(categories)) % len(in_cat)]
            self._send(actions, key, item, now, newcomer=False)

    def _send(
        self, actions: Actions, key: str, item: SuiteItem, now: float, newcomer: bool
    ) -> None:
        """A probe job for ``key``: into ``actions``, for the service to publish."""
        agent, expert = parse_key(key)
        request_id = f"probe-{uuid.uuid4().hex[:12]}"
        job = Job(
            request_id=request_id,
            expert_id=expert,
            prompt=item.prompt,
            choices=item.choices,
            question=item.question,
            timeout_s=self.links.settings.probe_timeout_s,
            issued_s=now_s(),
        )
        self.probes[request_id] = _Probe(key, item, now, newcomer)
        actions.jobs.append((agent, job))

    # -- newcomers ----------------------------------------------------------------------

    def _newcomers(self, now: float, actions: Actions) -> None:
        """Profile the online experts the gate does not know: a suite prompt at a time (into
        ``actions``), then retrain the gate with those measured, in the background."""
        selection = self.links.selection()
        if selection is None or self._retraining:
            return
        known = set(selection.expert_keys)
        online = self._online_keys()
        if self.newcomers is None and not self._open_queue(selection, online - known):
            return
        queue = self.newcomers
        assert queue is not None
        self._enqueue(sorted(online - known))
        for key in list(queue.progress):
            if key not in online and queue.progress[key].phase in ("profiling", "waiting"):
                queue.forget(key)
        nxt = queue.next(now, self._busy_agents(online), self._loadable)
        if nxt is not None:
            self._send(actions, nxt[0], nxt[1], now, newcomer=True)
        done = queue.finished()
        if done:
            for key in done:
                queue.progress[key].phase = "training"
            self._retraining = True
            threading.Thread(
                target=self._retrain, args=(done,), name="gate-retrain", daemon=True
            ).start()

    def _busy_agents(self, online: set[str]) -> set[str]:
        """Agents a newcomer's prompt waits for: a newcomer's prompt or a user's job out on
        them, or offline (a newcomer refining in the gate whose agent left). A cost probe out
        does not hold it back: those come every ``probe_interval_s`` for each expert, and on an
        agent with several they would keep it busy for good (the agent runs the two in turn)."""
        load = self.links.load()
        busy = {agent_of(p.key) for p in self.probes.values() if p.newcomer}
        busy |= {agent for agent, jobs in load.items() if jobs > 0}
        assert self.newcomers is not None
        return busy | {agent_of(k) for k in self.newcomers.progress if k not in online}

    def _loadable(self, key: str) -> bool:
        """Whether the newcomer's agent can load it within its memory budget."""
        from controller.routing import loadable

        pair = parse_key(key)
        record = self.links.registry.get(pair.agent_id)
        return record is not None and loadable(record, pair.expert_id)

    def noted(self, answer: Answer) -> Answer:
        """``answer`` with each expert being profiled saying so, and how far."""
        queue = self.newcomers
        if queue is None or not answer.experts:
            return answer
        outputs = []
        for out in answer.experts:
            prog = queue.progress.get(expert_key(out.agent_id, out.expert_id))
            note = prog.note() if prog is not None else None
            outputs.append(out if note is None else out.model_copy(update={"profiling": note}))
        return answer.model_copy(update={"experts": outputs})

    def _open_queue(self, selection: LiveSelection, new: set[str]) -> bool:
        """The newcomer queue, made when the first newcomer comes (the suite loaded into a
        working copy of the profile); False while there is none, or no suite to profile on."""
        from controller.newcomers import NewcomerQueue, add_items
        from controller.profile import ProfileError
        from controller.suite import DEFAULT_SUITE, SuiteError, load_suite

        if not new or self._suite_problem is not None:
            return False
        working = selection.gated.profile.model_copy(deep=True)
        try:
            suite = load_suite(self.links.settings.suite or DEFAULT_SUITE)
            items = [i for i in suite if i.split in ("train", "val")]
            add_items(working, items)
        except (SuiteError, ProfileError) as exc:  # said once, not at every tick
            self._suite_problem = str(exc)
            self.links.event("profiling", f"newcomers cannot be profiled: {exc}")
            return False
        settings = self.links.settings
        self.newcomers = NewcomerQueue(
            items, rate_hz=settings.newcomer_rate_hz, sample=settings.newcomer_sample
        )
        self._working = working
        return True

    def _enqueue(self, new: list[str]) -> None:
        """Each newcomer not queued yet (and whose agent says what it is) into the queue."""
        from controller.newcomers import add_expert

        queue, working = self.newcomers, self._working
        assert queue is not None and working is not None
        infos = {
            (r.agent_id, e.expert_id): e
            for r in self.links.registry.agents()
            if r.capabilities
            for e in r.capabilities.experts
        }
        for key in new:
            if key in queue.progress:
                continue
            info = infos.get(parse_key(key))
            if info is None:
                continue
            add_expert(working, key, info.model, info.template)
            queue.add(key, working)
            prog = queue.progress[key]
            rest = f", then on {prog.rest} more in the background" if prog.rest else ""
            self.links.event(
                "profiling",
                f"{key} is new to the gate: it answers prompts that name it now; profiling it "
                f"on {prog.sample} suite prompts (stratified) to enter the gate{rest}",
                agent_id=agent_of(key),
            )

    def _measured(self, probe: _Probe, result: JobResult | None, round_trip: float) -> None:
        from controller.newcomers import store
        from controller.profile import Measurement

        queue = self.newcomers
        if queue is None or self._working is None:
            return
        ok = result is not None and result.ok and result.choice_probs is not None
        if ok and result is not None:
            total = result.latency.total_s
            energy = result.energy
            store(
                self._working,
                probe.item.id,
                probe.key,
                Measurement(
                    choice_probs=result.choice_probs or [],
                    compute_s=max(0.0, total - result.latency.queue_s - result.latency.load_s),
                    transmission_s=max(0.0, round_trip - total),
                    energy_j=energy.energy_j if energy else None,
                    energy_source=energy.source if energy else None,
                ),
            )
        queue.record(probe.key, ok)
        prog = queue.progress.get(probe.key)
        if prog is not None and (prog.measured + prog.failed) % 10 == 0:
            self.links.event("profiling", f"{probe.key}: {prog}")

    def _retrain(self, keys: list[str]) -> None:
        from controller.gate.cache import CachedEncoder
        from controller.newcomers import extend_gate, write_extended

        queue = self.newcomers
        selection = self.links.selection()
        assert queue is not None and selection is not None and self.model is not None
        assert self._working is not None
        try:
            started = time.perf_counter()
            encoder = CachedEncoder(selection.gated.gate._encoder())
            gated, loss = extend_gate(selection.gated, self._working, keys, encoder)
            seconds = time.perf_counter() - started
            write_extended(gated, self.links.state_dir)
            self.model.reseed({**self.model.seeds, **seeds_from_profile(gated.profile, keys)})
            with self._lock:
                self.links.install(_rebuilt(selection, gated))
                refined = [k for k in keys if k in selection.expert_keys]
                for key in keys:
                    queue.trained(key)
            entered = [k for k in keys if k not in refined]
            how = "; ".join(
                f"{verb} {', '.join(ks)}"
                for verb, ks in (("retrained with", entered), ("refined", refined))
                if ks
            )
            self.links.event(
                "profiling",
                f"gate {how} in {seconds:.1f} s (validation loss {loss:.3f}); re-planning",
            )
            self.links.replan(True)
        except Exception as exc:
            log.exception("retraining the gate failed")
            for key in keys:
                queue.progress[key].phase = "failed"
            why = f"retraining the gate for {', '.join(keys)} failed: {exc}"
            self.links.event("profiling", why)
        finally:
            self._retraining = False
            self.publish()

    def no_expert_reason(self) -> str:
        """Why a prompt finds no active expert: the budgets, when they fit no online expert."""
        if self.problem:
            return f"no active expert can answer: {self.problem}"
        return "no active expert can answer"

    # -- another controller's costs -------------------------------------------------------

    def on_peer_costs(self, table: CostTable) -> None:
        """The cost table another controller published (retained): kept for a takeover."""
        if table.controller_id != self.links.controller_id:
            self._peer_table = table

    def carry_peer_costs(self) -> int:
        """At a takeover: the live costs of the last table another controller published, when
        it is newer than this controller's own saved costs; returns how many experts."""
        table, self._peer_table = self._peer_table, None
        if table is None or self.model is None:
            return 0
        try:
            saved_s = self.path.stat().st_mtime
        except OSError:
            saved_s = 0.0
        if table.time_s <= saved_s:
            return 0
        min_samples = self.model.min_samples
        carried = 0
        for row in table.experts:
            seed = self.model.seeds.get(row.key)
            if row.origin != "live" or seed is None or not _same_seed(row, seed):
                continue  # ratios are to the profiled costs: only where both profiles agree
            delay = row.delay_ratio if row.delay_samples >= min_samples else None
            energy = row.energy_ratio if row.energy_samples >= min_samples else None
            window = self.model.window
            samples = (min(row.delay_samples, window), min(row.energy_samples, window))
            if (delay is not None or energy is not None) and self.model.carry(
                row.key, delay, energy, not row.energy_estimated, samples
            ):
                carried += 1
        if carried:
            self.links.event(
                "takeover",
                f"went on from the live costs of {carried} experts learnt by "
                f"{table.controller_id} ({now_s() - table.time_s:.0f} s old)",
            )
        return carried

    # -- the cost table -----------------------------------------------------------------

    def table(self) -> CostTable | None:
        selection = self.links.selection()
        if self.model is None or selection is None:
            return None
        online = self._online_keys()
        planned = _keys(self.links.planned())
        gate_keys = set(selection.expert_keys)
        rows = []
        for key in sorted(set(self.model.seeds) | online):
            live = self.model.current(key)
            progress = self.newcomers.progress.get(key) if self.newcomers else None
            if live is None:
                rows.append(
                    ExpertCostRow(
                        key=key,
                        online=key in online,
                        planned=key in planned,
                        in_gate=key in gate_keys,
                        origin="unknown",
                        **_progress(progress, "waiting to be profiled"),
                    )
                )
                continue
            rows.append(
                ExpertCostRow(
                    key=key,
                    online=key in online,
                    planned=key in planned,
                    in_gate=key in gate_keys,
                    energy_j=live.cost.energy_j,
                    energy_estimated=live.cost.energy_estimated,
                    energy_source=live.energy_source,
                    delay_s=live.cost.delay_s,
                    origin=live.origin,  # type: ignore[arg-type]
                    delay_samples=live.delay_samples,
                    energy_samples=live.energy_samples,
                    delay_ratio=live.delay_ratio,
                    energy_ratio=live.energy_ratio,
                    **_progress(progress, None),
                )
            )
        budgets = self.links.budgets()
        self.problem = infeasible(
            self._gate_costs(),  # type: ignore[arg-type]
            budgets,
            sorted(online & gate_keys),
            selection.aggregation_delay_s,
        )
        return CostTable(
            controller_id=self.links.controller_id,
            time_s=now_s(),
            budgets=budgets,
            feasible=self.problem is None,
            problem=self.problem,
            drift_threshold=self.drift.threshold,
            window=self.model.window,
            experts=rows,
        )

    def publish(self) -> None:
        with self._publish_lock:
            table = self.table()
            if table is not None:
                self.links.publish_costs(table)  # while active and connected


def _progress(progress: Progress | None, otherwise: str | None) -> dict[str, object]:
    """A cost row's profiling fields: how far a newcomer is (nothing once it is done)."""
    if progress is None:
        return {"profiling": otherwise}
    if progress.phase == "done":
        return {}
    return {"profiling": str(progress), "profiled": progress.answered, "profile_of": progress.total}


def _keys(pool: Mapping[str, list[str]]) -> set[str]:
    """``expert@agent`` of every expert of every agent in ``pool`` (agent -> experts)."""
    return {expert_key(agent, expert) for agent, experts in pool.items() for expert in experts}


def _rebuilt(old: LiveSelection, gated: GatedProfile) -> LiveSelection:
    """A selection like ``old`` (its aggregation delay and time limit) over ``gated``."""
    from controller.selection.live import LiveSelection

    return LiveSelection(
        gated, aggregation_delay_s=old.aggregation_delay_s, time_limit_s=old.time_limit_s
    )


def _same_seed(row: ExpertCostRow, seed: Seed) -> bool:
    """Whether the profiled delays behind ``row`` (its delays over its ratio) are ours."""
    if not row.delay_s or row.delay_ratio <= 0 or set(row.delay_s) != set(seed.delay_s):
        return False
    return all(
        math.isclose(row.delay_s[c] / row.delay_ratio, seed.delay_s[c], rel_tol=1e-6)
        for c in seed.delay_s
    )


def state_costs_path(state_dir: Path) -> Path:
    return state_dir / "costs.json"
