"""Prometheus metrics of a controller: prompts by status, end-to-end latency, per-expert latency
and energy (by source), fleet power from telemetry, agents online, plan epoch, queue depth,
rejected messages by topic and whether the ledger is durable. ``moe2 controller run --metrics
HOST:PORT`` serves them.

Counters and histograms are observed as answers and results pass; the fleet's state (power,
agents, epoch, queue, rejections) is a ``FleetSnapshot`` the controller hands over at each
scrape, so it is never stale and costs nothing between scrapes. prometheus_client is imported
at the first answer, result or ``serve``: a controller at rest does without it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from messages.answers import Answer
from messages.results import JobResult
from messages.telemetry import Telemetry

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_LISTEN = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]*):(?P<port>\d{1,5})$")


class ListenError(ValueError):
    """A HOST:PORT that cannot be listened on."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``:PORT`` for every interface, ``[::1]:PORT`` for IPv6) as (host, port)."""
    found = _LISTEN.match(text.strip())
    port = int(found.group("port")) if found else -1
    if found is None or not 0 < port < 65536:
        raise ListenError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9100 or :9100)")
    host = found.group("host").strip("[]") or "0.0.0.0"
    return host, port


@dataclass(frozen=True)
class FleetSnapshot:
    """What the controller knows now, as a scrape reports it."""

    online: list[tuple[str, Telemetry | None]]  # each online agent and its last telemetry
    plan_epoch: int
    queued: int  # prompts waiting for room
    pending: int  # prompts dispatched, not answered
    active: bool
    durable: bool  # the ledger is written to disk
    rejected: dict[str, int]  # payloads rejected, by topic pattern


class _FleetState:
    """The controller's snapshot, taken at every scrape (a prometheus_client collector)."""

    def __init__(self, snapshot: Callable[[], FleetSnapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        c = self.snapshot()
        yield from _agent_gauges(c.online)
        yield GaugeMetricFamily(
            "moe2_plan_epoch", "Epoch of the controller's activation plan", value=c.plan_epoch
        )
        yield GaugeMetricFamily(
            "moe2_queue_depth", "Prompts waiting for room on the fleet", value=c.queued
        )
        yield GaugeMetricFamily(
            "moe2_pending_prompts", "Prompts dispatched and not yet answered", value=c.pending
        )
        yield GaugeMetricFamily(
            "moe2_controller_active",
            "1 on the active controller, 0 on a standby",
            value=1 if c.active else 0,
        )
        yield GaugeMetricFamily(
            "moe2_ledger_durable",
            "1 while accepted prompts are written to the ledger on disk, 0 while they are kept "
            "in memory only (the state folder or disk is at fault: see the status's "
            "state_problem)",
            value=1 if c.durable else 0,
        )
        rejected = CounterMetricFamily(
            "moe2_rejected_messages", "Payloads rejected, by topic pattern", labels=["topic"]
        )
        for topic, count in sorted(c.rejected.items()):
            rejected.add_metric([topic], count)
        yield rejected


def _agent_gauges(online: list[tuple[str, Telemetry | None]]) -> Iterator[Any]:
    """Power and queue depth of each online agent, the fleet's power, and how many report."""
    from prometheus_client.core import GaugeMetricFamily

    power = GaugeMetricFamily(
        "moe2_agent_power_watts",
        "Each online agent's last power reading from telemetry",
        labels=["agent", "source"],
    )
    fleet_w = 0.0
    measured = 0
    queue = GaugeMetricFamily(
        "moe2_agent_queue_depth", "Jobs waiting on each online agent", labels=["agent"]
    )
    for agent_id, t in online:
        if t is None:
            continue
        queue.add_metric([agent_id], t.queue_depth)
        if t.power_w is not None:
            power.add_metric([agent_id, t.energy_source or "unknown"], t.power_w)
            fleet_w += t.power_w
            measured += 1
    yield power
    yield queue
    yield GaugeMetricFamily(
        "moe2_fleet_power_watts",
        "Sum of the online agents' last power readings (agents without a reading left out)",
        value=fleet_w,
    )
    yield GaugeMetricFamily(
        "moe2_agents_power_reporting", "Online agents that report power", value=measured
    )
    yield GaugeMetricFamily("moe2_agents_online", "Agents online", value=len(online))


class ControllerMetrics:
    """One controller's metrics in their own registry (several controllers in one process, as
    in tests, do not collide)."""

    registry: CollectorRegistry
    prompts: Counter
    latency: Histogram
    expert_latency: Histogram
    expert_results: Counter
    expert_energy: Counter
    over_budget: Counter

    def __init__(self, snapshot: Callable[[], FleetSnapshot]) -> None:
        """``snapshot``: the fleet's state now, taken at every scrape."""
        self.snapshot = snapshot
        self.server: Any = None
        self._opened = False
        self._open_lock = threading.Lock()

    def _open(self) -> None:
        """Make the registry and the instruments, once (at the first answer, result or serve)."""
        if self._opened:
            return
        with self._open_lock:
            if self._opened:
                return
            self._build()
            self._opened = True

    def _build(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.prompts = Counter(
            "moe2_prompts", "Prompts answered, by answer status", ["status"], registry=r
        )
        self.latency = Histogram(
            "moe2_prompt_latency_seconds",
            "Controller receipt of a prompt to its answer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.expert_latency = Histogram(
            "moe2_expert_result_latency_seconds",
            "Agent receipt of a job to its result, per expert",
            ["expert", "agent"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.expert_results = Counter(
            "moe2_expert_results",
            "Job results, per expert and outcome",
            ["expert", "agent", "ok"],
            registry=r,
        )
        self.expert_energy = Counter(
            "moe2_expert_energy_joules",
            "Energy the experts' jobs spent, by where the figure came from (a sensor or "
            "'estimate', a declared power model)",
            ["expert", "agent", "source"],
            registry=r,
        )
        self.over_budget = Counter(
            "moe2_answers_over_budget",
            "Answers that ran over a budget they were answered under (a budget bounds the "
            "expected cost per query), by budget: delay (late) or energy",
            ["budget"],
            registry=r,
        )
        r.register(_FleetState(self.snapshot))

    def answered(self, answer: Answer) -> None:
        self._open()
        self.prompts.labels(answer.status).inc()
        if answer.status in ("ok", "partial", "failed"):
            self.latency.observe(answer.latency_s)
        for overrun in answer.over_budget:
            self.over_budget.labels(overrun.budget).inc()

    def result(self, result: JobResult) -> None:
        self._open()
        labels = (result.expert_id, result.agent_id)
        self.expert_results.labels(*labels, "true" if result.ok else "false").inc()
        if result.ok:
            self.expert_latency.labels(*labels).observe(result.latency.total_s)
        if result.energy is not None:
            self.expert_energy.labels(*labels, result.energy.source).inc(result.energy.energy_j)

    def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` (Prometheus text) on a background thread."""
        from prometheus_client import start_http_server

        self._open()
        self.server, _ = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
