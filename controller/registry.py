"""The fleet as seen from retained status and capabilities and the stream of telemetry."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from messages.capabilities import AgentCapabilities
from messages.status import AgentStatus
from messages.telemetry import Telemetry

# Agents whose retained status was cleared are remembered (at most this many, the latest), so
# that one still alive is brought back by its telemetry or results.
FORGOTTEN_KEPT = 4096


@dataclass
class AgentRecord:
    agent_id: str
    status: AgentStatus | None = None
    capabilities: AgentCapabilities | None = None
    telemetry: Telemetry | None = None
    last_heard: float = field(default_factory=time.monotonic)
    silent: bool = False  # marked offline by the registry for telemetry silence

    @property
    def online(self) -> bool:
        return self.status is not None and self.status.state == "online" and not self.silent

    @property
    def expert_ids(self) -> list[str]:
        return [e.expert_id for e in self.capabilities.experts] if self.capabilities else []

    def silence_limit_s(self, factor: float) -> float:
        """How long without a message before the agent counts as gone."""
        if self.status is None:
            return float("inf")
        return max(factor * self.status.telemetry_interval_s, 1.5 * self.status.keepalive_s)


@dataclass(frozen=True)
class Change:
    agent_id: str
    online: bool
    reason: str


class FleetRegistry:
    """Thread-safe: updated from the MQTT thread, read from others."""

    def __init__(self, silence_factor: float = 3.0) -> None:
        self.silence_factor = silence_factor
        self._agents: dict[str, AgentRecord] = {}
        self._forgotten: OrderedDict[str, AgentRecord] = OrderedDict()
        self._lock = threading.Lock()

    def _record(self, agent_id: str) -> AgentRecord:
        return self._agents.setdefault(agent_id, AgentRecord(agent_id))

    def on_status(self, status: AgentStatus) -> Change | None:
        with self._lock:
            forgotten = self._forgotten.pop(status.agent_id, None)
            if forgotten is not None:  # announced again after its status was cleared
                self._agents[status.agent_id] = forgotten
            record = self._record(status.agent_id)
            was = record.online and forgotten is None
            record.status = status
            record.silent = False
            record.last_heard = time.monotonic()
            now = record.online
        if was != now:
            return Change(status.agent_id, now, status.reason or status.state)
        return None

    def forget(self, agent_id: str) -> bool:
        """Drop an agent whose retained status was cleared (``moe2 fleet --forget``, or anyone
        clearing it). It is kept aside: telemetry or a result from it brings it back."""
        with self._lock:
            record = self._agents.pop(agent_id, None)
            if record is None:
                return False
            self._forgotten[agent_id] = record
            self._forgotten.move_to_end(agent_id)
            while len(self._forgotten) > FORGOTTEN_KEPT:
                self._forgotten.popitem(last=False)
            return True

    def _revive(self, agent_id: str) -> Change | None:
        """Under the lock: a forgotten agent that was heard from is back as it was, its
        silence clock restarted; a Change when that makes it online."""
        record = self._forgotten.pop(agent_id, None)
        if record is None:
            return None
        self._agents.setdefault(agent_id, record)
        record.silent = False
        record.last_heard = time.monotonic()
        if record.online:
            return Change(agent_id, True, "heard alive after its status was cleared")
        return None

    def heard(self, agent_id: str) -> Change | None:
        """A message from the agent itself (a result): a forgotten one comes back."""
        with self._lock:
            return self._revive(agent_id)

    def get(self, agent_id: str) -> AgentRecord | None:
        with self._lock:
            return self._agents.get(agent_id)

    def on_capabilities(self, caps: AgentCapabilities) -> None:
        with self._lock:
            record = self._forgotten.get(caps.agent_id) or self._record(caps.agent_id)
            record.capabilities = caps

    def on_telemetry(self, telemetry: Telemetry) -> Change | None:
        with self._lock:
            revived = self._revive(telemetry.agent_id)
            record = self._record(telemetry.agent_id)
            record.telemetry = telemetry
            record.last_heard = time.monotonic()
            if revived is not None:
                return revived
            if record.silent:
                record.silent = False
                return Change(telemetry.agent_id, record.online, "telemetry resumed")
        return None

    def heard_alive(self) -> set[str]:
        """Agents that have sent telemetry (online or not): more than an announcement."""
        with self._lock:
            return {a for a, r in self._agents.items() if r.telemetry is not None}

    def sweep(self) -> list[Change]:
        """Mark agents silent for too long as offline."""
        now = time.monotonic()
        changes = []
        with self._lock:
            for record in self._agents.values():
                limit = record.silence_limit_s(self.silence_factor)
                if record.online and now - record.last_heard > limit:
                    record.silent = True
                    changes.append(Change(record.agent_id, False, f"no message for {limit:.1f} s"))
        return changes

    def heard_all(self, now: float) -> None:
        """Count every agent's silence from ``now``: the controller was not running, or not
        hearing the broker, until now, so what it did not hear says nothing of the agents."""
        with self._lock:
            for record in self._agents.values():
                record.last_heard = max(record.last_heard, now)

    def agents(self) -> list[AgentRecord]:
        with self._lock:
            return [self._agents[k] for k in sorted(self._agents)]

    def online_among(self, agent_ids: Iterable[str]) -> set[str]:
        """Which of ``agent_ids`` are online: for the planned agents, without a pass over every
        agent ever announced."""
        with self._lock:
            found = (self._agents.get(a) for a in agent_ids)
            return {r.agent_id for r in found if r is not None and r.online}

    def online_experts(self) -> dict[str, list[str]]:
        """agent_id -> experts it can serve, for every online agent."""
        return {r.agent_id: r.expert_ids for r in self.agents() if r.online}

    def known_experts(self) -> set[tuple[str, str]]:
        """(agent_id, expert_id) of every agent ever seen, online or not."""
        return {(r.agent_id, e) for r in self.agents() for e in r.expert_ids}

    def snapshot(self) -> list[dict[str, Any]]:
        """A plain view for ``moe2 fleet``."""
        out = []
        for r in self.agents():
            t = r.telemetry
            out.append(
                {
                    "agent_id": r.agent_id,
                    "state": "online" if r.online else "offline",
                    "reason": None
                    if r.online
                    else (
                        "telemetry silence" if r.silent else (r.status.reason if r.status else None)
                    ),
                    "version": r.status.version if r.status else None,
                    "failed_experts": dict(r.status.failed_experts) if r.status else {},
                    "warning": r.status.reason if r.online and r.status else None,
                    "hostname": r.capabilities.hostname if r.capabilities else None,
                    "experts": r.expert_ids,
                    "loaded_experts": t.loaded_experts if t else [],
                    "power_w": t.power_w if t else None,
                    "energy_j": t.energy_j if t else None,
                    "energy_source": t.energy_source if t else None,
                    "last_latency_s": t.last_latency_s if t else None,
                    "queue_depth": t.queue_depth if t else None,
                    "jobs_done": t.jobs_done if t else None,
                    "plan_epoch": t.plan_epoch if t else None,
                }
            )
        return out
