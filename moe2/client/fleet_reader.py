"""Reading the fleet's state as any client can: retained status, capabilities and plan, and a
few seconds of telemetry."""

from __future__ import annotations

import time
import uuid
from typing import Any

from controller.registry import FleetRegistry
from messages import topics
from messages.base import Message
from messages.bus import BrokerEndpoint, Bus, Inbound
from messages.controller import ControllerEvent, ControllerStatus, FleetPlan
from messages.fleet_config import FleetConfig
from messages.topics import Topic


class ReadRefused(PermissionError):
    """The fleet's agents are there, but this login may not read their status (the ACL)."""


def _who(endpoint: BrokerEndpoint) -> str:
    return f"login {endpoint.username!r}" if endpoint.username else "an anonymous client"


def acl_diagnosis(
    endpoint: BrokerEndpoint,
    fleet: str,
    refused: dict[str, str],
    controllers: list[ControllerStatus],
    agents_seen: int,
) -> str | None:
    """Why this client sees no agent when the broker's ACL is the cause, else None: the broker
    refused the subscription to the agents' status or capabilities (SUBACK 0x87 on MQTT 5,
    0x80 on 3.1.1), or it granted it (Mosquitto's ACL file filters at delivery instead) while
    a controller, whose status this login may read, counts agents online."""
    agents_topic = topics.AGENT_STATUS.filter(fleet)
    own = {agents_topic, topics.AGENT_CAPABILITIES.filter(fleet)}
    fix = (
        f"use a login the ACL lets read moe2/{fleet}/# (with setup-broker.sh: the controller's, "
        "on the fleet port), or widen the ACL"
    )
    if own & set(refused):
        listed = "; ".join(f"{f}: {why}" for f, why in sorted(refused.items()))
        return (
            f"the broker {endpoint.url} refused {_who(endpoint)} a subscription to the fleet's "
            f"status topics ({listed}): its ACL does not let this login read them, so the "
            f"agents cannot be seen from here, whether they run or not; {fix}"
        )
    latest = {c.controller_id: c for c in controllers}.values()
    counting = [c for c in latest if c.state == "online" and c.agents_online > 0]
    if agents_seen or not counting:
        return None
    lead = max(counting, key=lambda c: (c.role == "active", c.agents_online))
    return (
        f"controller {lead.controller_id} counts {lead.agents_online} agent(s) online in fleet "
        f"{fleet!r}, but {_who(endpoint)} received none of their status on {agents_topic}: "
        "the broker's ACL does not let this login read it (the agents are not the problem; "
        "with setup-broker.sh a client login reads only its replies and the controllers' "
        f"status); {fix}"
    )


def read_fleet(
    endpoint: BrokerEndpoint,
    fleet: str,
    wait_s: float,
    configs: list[FleetConfig] | None = None,
) -> tuple[FleetRegistry, FleetPlan | None]:
    """The agents as seen after ``wait_s`` seconds, and the controller's current plan if any;
    the fleet's configuration in force is appended to ``configs`` when one is published.
    Raises ConnectionError when the broker cannot be reached, ReadRefused when the broker's ACL
    keeps the agents' status from this login (``acl_diagnosis``)."""
    registry = FleetRegistry()
    plans: list[FleetPlan] = []
    controllers: list[ControllerStatus] = []
    bus = Bus(endpoint, fleet, client_id=f"moe2-read-{uuid.uuid4().hex[:10]}")
    bus.subscribe(topics.AGENT_STATUS, lambda i: registry.on_status(i.message))
    bus.subscribe(topics.AGENT_CAPABILITIES, lambda i: registry.on_capabilities(i.message))
    bus.subscribe(topics.AGENT_TELEMETRY, lambda i: registry.on_telemetry(i.message))
    bus.subscribe(topics.CONTROLLER_PLAN, lambda i: plans.append(i.message))
    bus.subscribe(topics.CONTROLLER_STATUS, lambda i: controllers.append(i.message))
    if configs is not None:
        bus.subscribe(topics.CONTROLLER_CONFIG, lambda i: configs.append(i.message))
    bus.connect()
    try:
        time.sleep(wait_s)
        refused = bus.refused_subscriptions()
    finally:
        bus.close()
    why = acl_diagnosis(endpoint, fleet, refused, controllers, len(registry.snapshot()))
    if why is not None:
        raise ReadRefused(why)
    return registry, (plans[-1] if plans else None)


class PlanRefused(RuntimeError):
    """The controller refused what was asked, or no new plan came."""


def _require_active(statuses: list[ControllerStatus], fleet: str) -> None:
    """Refuse to leave a retained control message that no controller is there to take."""
    latest = {s.controller_id: s for s in statuses}
    if not any(s.state == "online" and s.role == "active" for s in latest.values()):
        raise PlanRefused(
            f"no active controller serves fleet {fleet!r}: nothing was published (a retained "
            "message would be applied by whichever controller starts next); start one with "
            "`moe2 controller run`"
        )


def clear_retained(
    endpoint: BrokerEndpoint, fleet: str, clears: list[tuple[Topic[Any], dict[str, str]]]
) -> None:
    """Clear retained messages (budgets, a cache plan, a forgotten agent's state)."""
    bus = Bus(endpoint, fleet, client_id=f"moe2-clear-{uuid.uuid4().hex[:10]}")
    bus.connect()
    try:
        for topic, params in clears:
            bus.client.publish(
                topic.name(fleet, **params), b"", qos=1, retain=True
            ).wait_for_publish(5)
    finally:
        bus.close()


def agent_online(endpoint: BrokerEndpoint, fleet: str, agent_id: str, wait_s: float = 1.0) -> bool:
    """Whether the agent's retained status says online."""
    seen: list[bool] = []
    bus = Bus(endpoint, fleet, client_id=f"moe2-read-{uuid.uuid4().hex[:10]}")
    bus.subscribe(
        topics.AGENT_STATUS, lambda i: seen.append(i.message.state == "online"), agent_id=agent_id
    )
    bus.connect()
    try:
        time.sleep(wait_s)
    finally:
        bus.close()
    return bool(seen and seen[-1])


def request_plan(
    endpoint: BrokerEndpoint, fleet: str, topic: Topic[Any], message: Message, wait_s: float
) -> FleetPlan:
    """Publish budgets or a cache plan to the controller and wait for the new fleet plan it
    pushes; raises PlanRefused with the controller's reason, or when none comes in time."""
    plans: list[FleetPlan] = []
    refusals: list[ControllerEvent] = []
    name = topic.name(fleet)

    def refused(inbound: Inbound[ControllerEvent]) -> None:
        if inbound.message.kind == "rejected" and inbound.message.topic == name:
            refusals.append(inbound.message)

    statuses: list[ControllerStatus] = []
    bus = Bus(endpoint, fleet, client_id=f"moe2-ask-plan-{uuid.uuid4().hex[:10]}")
    bus.subscribe(topics.CONTROLLER_PLAN, lambda i: plans.append(i.message))
    bus.subscribe(topics.CONTROLLER_EVENTS, refused)
    bus.subscribe(topics.CONTROLLER_STATUS, lambda i: statuses.append(i.message))
    bus.connect()
    try:
        time.sleep(0.5)  # the retained plan arrives first: its epoch is the one to beat
        _require_active(statuses, fleet)
        before = plans[-1].epoch if plans else -1
        bus.publish(topic, message).wait_for_publish(5)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if refusals:
                raise PlanRefused(f"the controller refused it: {refusals[-1].reason}")
            fresh = [p for p in plans if p.epoch > before]
            if fresh:
                return fresh[-1]
            time.sleep(0.05)
    finally:
        bus.close()
    raise PlanRefused(f"no new plan within {wait_s:g} s: is a controller running?")


def fleets_with_agents(endpoint: BrokerEndpoint, wait_s: float = 1.0) -> set[str]:
    """The fleets with an agent status retained on this broker (whatever they are named): what
    ``moe2 fleet`` suggests when the fleet it was asked about has none. Raises ConnectionError
    when the broker cannot be reached."""
    fleets: set[str] = set()
    pattern = f"{topics.PREFIX}/+/agents/+/status"

    def seen(client: Any, userdata: Any, msg: Any) -> None:
        if msg.payload:  # an empty retained payload is a cleared status
            fleets.add(msg.topic.split("/")[1])

    bus = Bus(endpoint, "any", client_id=f"moe2-read-{uuid.uuid4().hex[:10]}")
    bus.client.message_callback_add(pattern, seen)
    bus.connect()
    try:
        bus.client.subscribe(pattern, qos=0)
        time.sleep(wait_s)  # retained messages come at once after the SUBACK
    finally:
        bus.close()
    return fleets
