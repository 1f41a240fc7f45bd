"""``moe2 fleet --watch``: a live table of the fleet, refreshed from the bus.

Agents come from their retained status and capabilities and the stream of telemetry, the plan
from the controller's retained plan; an agent offline for longer than ``age_out_s`` leaves the
table (it stays retained on the broker until ``moe2 fleet --forget``).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from controller.registry import FleetRegistry
from messages import topics
from messages.bus import BrokerEndpoint, Bus
from messages.controller import FleetPlan


class FleetWatch:
    """The fleet as the bus shows it, with the time each agent was last heard from."""

    def __init__(self, endpoint: BrokerEndpoint, fleet: str, age_out_s: float = 60.0) -> None:
        self.fleet = fleet
        self.endpoint = endpoint
        self.age_out_s = age_out_s
        self.registry = FleetRegistry()
        self.plan: FleetPlan | None = None
        self.heard: dict[str, float] = {}
        self.offline_since: dict[str, float] = {}
        self._lock = threading.Lock()
        self.bus = Bus(endpoint, fleet, client_id=f"moe2-watch-{uuid.uuid4().hex[:10]}")
        self.bus.subscribe(topics.AGENT_STATUS, self._heard(self.registry.on_status))
        self.bus.subscribe(topics.AGENT_CAPABILITIES, self._heard(self.registry.on_capabilities))
        self.bus.subscribe(topics.AGENT_TELEMETRY, self._heard(self.registry.on_telemetry))
        self.bus.subscribe(topics.CONTROLLER_PLAN, self._on_plan)

    def _heard(self, update: Any) -> Any:
        def handle(inbound: Any) -> None:
            update(inbound.message)
            with self._lock:
                self.heard[inbound.message.agent_id] = time.monotonic()

        return handle

    def _on_plan(self, inbound: Any) -> None:
        self.plan = inbound.message

    def rows(self, now: float | None = None) -> list[dict[str, Any]]:
        """The registry's rows, less agents offline for longer than ``age_out_s``, each with
        ``heard_s`` (seconds since its last message) and the experts its plan holds."""
        now = time.monotonic() if now is None else now
        self.registry.sweep()
        kept = []
        assignments = self.plan.assignments if self.plan is not None else {}
        with self._lock:
            for row in self.registry.snapshot():
                agent = row["agent_id"]
                if row["state"] == "online":
                    self.offline_since.pop(agent, None)
                else:
                    since = self.offline_since.setdefault(agent, now)
                    if now - since > self.age_out_s:
                        continue
                heard = self.heard.get(agent)
                kept.append(
                    {
                        **row,
                        "heard_s": None if heard is None else max(0.0, now - heard),
                        "planned": assignments.get(agent, []),
                    }
                )
        return kept

    def table(self, now: float | None = None) -> Table:
        rows = self.rows(now)
        epoch = f", plan epoch {self.plan.epoch}" if self.plan is not None else ""
        table = Table(title=f"fleet {self.fleet} on {self.endpoint.url}{epoch}")
        for col in (
            "agent",
            "state",
            "experts (loaded)",
            "power W",
            "queue",
            "jobs",
            "last latency s",
            "heard s ago",
        ):
            table.add_column(col)
        for r in rows:
            state = (
                "[green]online[/]"
                if r["state"] == "online"
                else f"[red]offline[/] {r['reason'] or ''}"
            )
            loaded = set(r["loaded_experts"])
            experts = ", ".join(f"[bold]{e}[/]" if e in loaded else e for e in r["experts"])
            power = "n/a" if r["power_w"] is None else f"{r['power_w']:.1f} ({r['energy_source']})"
            table.add_row(
                r["agent_id"],
                state,
                experts or "-",
                power,
                "-" if r["queue_depth"] is None else str(r["queue_depth"]),
                "-" if r["jobs_done"] is None else str(r["jobs_done"]),
                "-" if r["last_latency_s"] is None else f"{r['last_latency_s']:.2f}",
                "-" if r["heard_s"] is None else f"{r['heard_s']:.1f}",
            )
        if not rows:
            table.caption = "no agent yet: waiting for the fleet's retained status and telemetry"
        return table

    def run(self, console: Console, refresh_s: float, duration_s: float | None) -> None:
        """Show the live table until Ctrl-C or ``duration_s``; raises ConnectionError."""
        self.bus.connect()
        stop = time.monotonic() + duration_s if duration_s is not None else None
        try:
            with Live(self.table(), console=console, refresh_per_second=4, transient=False) as live:
                while stop is None or time.monotonic() < stop:
                    time.sleep(
                        refresh_s
                        if stop is None
                        else min(refresh_s, max(0.0, stop - time.monotonic()))
                    )
                    live.update(self.table())
        except KeyboardInterrupt:
            pass
        finally:
            self.bus.close()
