"""Reading the fleet's state as any client can: retained status, capabilities and plan, and a
few seconds of telemetry."""

from __future__ import annotations

import time
import uuid

from controller.registry import FleetRegistry
from messages import topics
from messages.bus import BrokerEndpoint, Bus
from messages.controller import FleetPlan


def read_fleet(
    endpoint: BrokerEndpoint, fleet: str, wait_s: float
) -> tuple[FleetRegistry, FleetPlan | None]:
    """The agents as seen after ``wait_s`` seconds, and the controller's current plan if any.
    Raises ConnectionError when the broker cannot be reached."""
    registry = FleetRegistry()
    plans: list[FleetPlan] = []
    bus = Bus(endpoint, fleet, client_id=f"read-{uuid.uuid4().hex[:10]}")
    bus.subscribe(topics.AGENT_STATUS, lambda i: registry.on_status(i.message))
    bus.subscribe(topics.AGENT_CAPABILITIES, lambda i: registry.on_capabilities(i.message))
    bus.subscribe(topics.AGENT_TELEMETRY, lambda i: registry.on_telemetry(i.message))
    bus.subscribe(topics.CONTROLLER_PLAN, lambda i: plans.append(i.message))
    bus.connect()
    try:
        time.sleep(wait_s)
    finally:
        bus.close()
    return registry, (plans[-1] if plans else None)
