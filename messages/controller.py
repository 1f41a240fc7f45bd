"""What the controller publishes about itself: liveness, the fleet-wide plan, events."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from messages.base import (
    TERM_DOC,
    Count,
    DurationS,
    FiniteFloat,
    Message,
    PlanEpoch,
    Term,
    TimestampS,
    TopicLevel,
    TotalEnergyJ,
)


class ControllerStatus(Message):
    """One controller's retained liveness on ``controllers/{controller_id}/status``; its MQTT will
    sets it offline. One online controller is active (``controller/leadership.py``: the one with
    the highest ``term``); the others wait as hot standbys."""

    controller_id: TopicLevel
    state: Literal["online", "offline"]
    role: Literal["active", "standby"] = "standby"
    since_s: TimestampS = Field(description="When this incarnation came online")
    incarnation: PlanEpoch = Field(description="Start time in ms: tells a restart apart")
    term: Term | None = Field(default=None, description=TERM_DOC)
    version: str
    time_s: TimestampS
    agents_online: Count
    requests_answered: Count
    queued: Count = Field(default=0, description="Prompts waiting for room on the fleet")
    pending: Count = Field(default=0, description="Prompts dispatched, not yet answered")
    late_results: Count = Field(
        default=0, description="Results that came after their prompt was answered (not waited for)"
    )
    rejected: dict[str, Count] = Field(
        default_factory=dict, description="Rejected payloads per topic pattern"
    )
    plan_problem: str | None = Field(
        default=None,
        description="Why no online expert fits the budgets (each one's cost against them), when "
        "none does",
    )
    gate: Literal["loading", "ready", "failed"] | None = Field(
        default=None,
        description="Its gate's prompt encoder (None: no gate): loading, ready, or failed to "
        "load; until ready, prompts go to the planned experts with equal weights, under the "
        "same budgets",
    )
    durable: bool = Field(
        default=True,
        description="Whether the prompts it accepts are written to its ledger on disk (False: "
        "kept in memory only until the ledger can be written again; see state_problem)",
    )
    state_problem: str | None = Field(
        default=None,
        description="What is wrong with its state folder or ledger (path, cause, what it does "
        "about it), or what it moved aside at start",
    )
    config_id: str | None = Field(
        default=None,
        max_length=64,
        description="The fleet configuration it holds (FleetConfig.config_id; None: none)",
    )
    config_problem: str | None = Field(
        default=None,
        max_length=4000,
        description="Why it may not lead: it holds another configuration than the fleet's, or "
        "has not fetched the fleet's yet (None: it may)",
    )


class FleetPlan(Message):
    epoch: PlanEpoch
    controller_id: TopicLevel | None = Field(default=None, description="Who made the plan")
    incarnation: PlanEpoch | None = None
    term: Term | None = Field(default=None, description=TERM_DOC)
    time_s: TimestampS
    algorithm: str = Field(default="all", description="How the active set was chosen")
    loss: FiniteFloat | None = Field(default=None, description="Validation loss of the chosen set")
    optimal: bool | None = Field(
        default=None, description="Whether the selection proved the set optimal in its time limit"
    )
    gap: FiniteFloat | None = Field(
        default=None, description="(loss - proven lower bound) / loss when not proven optimal"
    )
    energy_j: TotalEnergyJ | None = Field(
        default=None, description="Expected energy per query of the chosen set"
    )
    delay_s: dict[str, DurationS] = Field(
        default_factory=dict, description="Expected delay per category of the chosen set"
    )
    assignments: dict[TopicLevel, list[TopicLevel]] = Field(
        description="agent_id -> experts it must hold loaded"
    )


class ControllerEvent(Message):
    time_s: TimestampS
    kind: Literal[
        "rejected",
        "agent_online",
        "agent_offline",
        "replan",
        "request_failed",
        "late_result",
        "failover",
        "takeover",
        "gate",
        "busy",
        "drift",
        "profiling",
        "over_budget",
        "config",
    ]
    topic: str | None = None
    reason: str
    request_id: str | None = None
    agent_id: str | None = None
