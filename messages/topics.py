"""Every topic of the fleet, declared once: pattern, message type, QoS and retain flag.

Patterns are relative to the fleet prefix ``moe2/{fleet}/``; ``{name}`` is one topic level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Generic, TypeVar

from messages.answers import Answer
from messages.base import TOPIC_LEVEL_RE, Message
from messages.budgets import Budgets
from messages.cache_plan import CachePlan
from messages.cancel import Cancel
from messages.capabilities import AgentCapabilities
from messages.controller import ControllerEvent, ControllerStatus, FleetPlan
from messages.costs import CostTable
from messages.events import AgentEvent
from messages.fleet_config import ConfigChunk, FleetConfig
from messages.jobs import Job
from messages.plan import ActivationPlan
from messages.prompt_cancel import PromptCancel
from messages.prompts import Prompt
from messages.results import JobResult
from messages.status import AgentStatus
from messages.stream import StreamChunk
from messages.telemetry import Telemetry

M = TypeVar("M", bound=Message)

PREFIX = "moe2"
_PARAM = re.compile(r"\{([a-z_]+)\}")


class TopicError(ValueError):
    """A topic name or parameter that cannot be used."""


def check_level(name: str, value: str) -> str:
    """Validate one topic level (a fleet name, an agent id, a request id)."""
    if not TOPIC_LEVEL_RE.fullmatch(value):  # `$` alone lets a final newline in
        raise TopicError(
            f"{name} {value!r} is not a valid topic level: use 1-128 letters, digits and ._:@-"
        )
    return value


@dataclass(frozen=True)
class Topic(Generic[M]):
    """One topic pattern. ``message`` is None for a bare UTF-8 text payload."""

    pattern: str
    message: type[M] | None
    qos: int
    retained: bool
    description: str

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(_PARAM.findall(self.pattern))

    def name(self, fleet: str, **params: str) -> str:
        """The concrete topic name, e.g. ``moe2/lab/agents/orin-1/status``."""
        check_level("fleet", fleet)
        if set(params) != set(self.params):
            raise TopicError(f"{self.pattern} needs {self.params}, got {tuple(params)}")
        for key, value in params.items():
            check_level(key, value)
        return f"{PREFIX}/{fleet}/" + self.pattern.format(**params)

    def filter(self, fleet: str, **params: str) -> str:
        """A subscription filter: every parameter not given becomes ``+``."""
        check_level("fleet", fleet)
        unknown = set(params) - set(self.params)
        if unknown:
            raise TopicError(f"{self.pattern} has no parameter {', '.join(sorted(unknown))}")
        for key, value in params.items():
            check_level(key, value)
        filled = {p: params.get(p, "+") for p in self.params}
        return f"{PREFIX}/{fleet}/" + self.pattern.format(**filled)

    def match(self, fleet: str, topic: str) -> dict[str, str] | None:
        """The parameters of a concrete topic name, or None when it is not this topic."""
        regex = (
            "^"
            + re.escape(f"{PREFIX}/{fleet}/")
            + _PARAM.sub(
                lambda m: f"(?P<{m.group(1)}>[^/]+)",
                re.escape(self.pattern).replace(r"\{", "{").replace(r"\}", "}"),
            )
            + "$"
        )
        found = re.match(regex, topic)
        return found.groupdict() if found else None


AGENT_STATUS = Topic(
    "agents/{agent_id}/status",
    AgentStatus,
    1,
    True,
    "online/offline and version; the agent's MQTT will sets offline",
)
AGENT_CAPABILITIES = Topic(
    "agents/{agent_id}/capabilities",
    AgentCapabilities,
    1,
    True,
    "hardware, memory, power sensor, experts it can serve",
)
AGENT_TELEMETRY = Topic(
    "agents/{agent_id}/telemetry",
    Telemetry,
    0,
    False,
    "power W, energy J, utilisation, memory, queue depth, loaded experts",
)
AGENT_PLAN = Topic(
    "agents/{agent_id}/plan",
    ActivationPlan,
    1,
    True,
    "experts the agent must hold loaded, with the plan epoch",
)
AGENT_JOBS = Topic("agents/{agent_id}/jobs", Job, 1, False, "one inference job for one expert")
AGENT_CANCEL = Topic(
    "agents/{agent_id}/cancel",
    Cancel,
    1,
    False,
    "a job no longer wanted (answered without it, deadline passed): dropped or stopped",
)
AGENT_RESULTS = Topic(
    "agents/{agent_id}/results",
    JobResult,
    1,
    False,
    "text or choice probabilities, tokens, latency breakdown, energy",
)
AGENT_STREAM = Topic(
    "agents/{agent_id}/stream",
    StreamChunk,
    0,
    False,
    "tokens of a job that asked to stream, a few at a time, as they come",
)
AGENT_EVENTS = Topic(
    "agents/{agent_id}/events", AgentEvent, 1, False, "payloads the agent rejected, load failures"
)
PROMPTS = Topic(
    "prompts",
    Prompt,
    1,
    False,
    "a prompt as JSON; MQTT 5 response topic and correlation data honoured",
)
PROMPTS_TEXT = Topic(
    "prompts/text", None, 1, False, "a bare UTF-8 prompt; the answer goes to answers/{request_id}"
)
CLIENT_PROMPTS = Topic(
    "clients/{client_id}/prompts",
    Prompt,
    1,
    False,
    "a prompt from the login {client_id} (the secure broker lets only it publish here); its "
    "answer goes to replies/{client_id}/... only",
)
PROMPTS_CANCEL = Topic(
    "prompts/cancel",
    PromptCancel,
    1,
    False,
    "an asker no longer wants an answer (it went away): its jobs are cancelled, the prompt "
    "answered failed and forgotten",
)
CLIENT_PROMPTS_TEXT = Topic(
    "clients/{client_id}/prompts/text",
    None,
    1,
    False,
    "a bare UTF-8 prompt from the login {client_id}; the answer goes to "
    "replies/{client_id}/{request_id}",
)
CLIENT_PROMPTS_CANCEL = Topic(
    "clients/{client_id}/prompts/cancel",
    PromptCancel,
    1,
    False,
    "the login {client_id} cancels one of its own prompts (another login's is left alone)",
)
ANSWERS = Topic(
    "answers/{request_id}",
    Answer,
    1,
    False,
    "the answer with per-expert weights, outputs, latency and energy",
)
REPLIES = Topic(
    "replies/{client_id}/{request_id}",
    Answer,
    1,
    False,
    "where `moe2 ask` asks for its answer (MQTT 5 response topic, or reply_to on 3.1.1)",
)
ANSWER_STREAM = Topic(
    "answers/{request_id}/stream",
    StreamChunk,
    0,
    False,
    "the leading expert's tokens of a streamed prompt, before its answer",
)
REPLIES_STREAM = Topic(
    "replies/{client_id}/{request_id}/stream",
    StreamChunk,
    0,
    False,
    "the same stream on a reply route (the route's topic + /stream)",
)
CONTROLLER_BUDGETS = Topic(
    "controller/budgets",
    Budgets,
    1,
    True,
    "energy and per-category delay budgets in force; a new one re-solves the selection",
)
CONTROLLER_CACHE_PLAN = Topic(
    "controller/cache-plan",
    CachePlan,
    1,
    True,
    "the experts each agent keeps loaded (SlimCaching); the controller turns it into plans",
)
CONTROLLER_STATUS = Topic(
    "controllers/{controller_id}/status",
    ControllerStatus,
    1,
    True,
    "one controller's liveness, role (active or standby) and counters; its will sets offline",
)
CONTROLLER_PLAN = Topic("controller/plan", FleetPlan, 1, True, "the fleet-wide activation plan")
CONTROLLER_EVENTS = Topic(
    "controller/events",
    ControllerEvent,
    1,
    False,
    "rejected payloads, agents on/offline, re-plans, failed requests",
)
CONTROLLER_COSTS = Topic(
    "controller/costs",
    CostTable,
    1,
    True,
    "each expert's current energy and delays (learnt from results), next to the budgets",
)
CONTROLLER_CONFIG = Topic(
    "controller/config",
    FleetConfig,
    1,
    True,
    "the fleet's MoE² configuration in force (profile, gate, budgets, selection settings) by "
    "content hash; a standby takes it before it may lead",
)
CONTROLLER_CONFIG_BLOBS = Topic(
    "controller/config/blobs/{digest}/{index}",
    ConfigChunk,
    1,
    True,
    "one compressed piece of a configuration's profile or gate, named by its sha256",
)

TOPICS: tuple[Topic, ...] = (
    AGENT_STATUS,
    AGENT_CAPABILITIES,
    AGENT_TELEMETRY,
    AGENT_PLAN,
    AGENT_JOBS,
    AGENT_CANCEL,
    AGENT_RESULTS,
    AGENT_EVENTS,
    AGENT_STREAM,
    PROMPTS,
    PROMPTS_TEXT,
    PROMPTS_CANCEL,
    CLIENT_PROMPTS,
    CLIENT_PROMPTS_TEXT,
    CLIENT_PROMPTS_CANCEL,
    ANSWERS,
    REPLIES,
    ANSWER_STREAM,
    REPLIES_STREAM,
    CONTROLLER_BUDGETS,
    CONTROLLER_CACHE_PLAN,
    CONTROLLER_STATUS,
    CONTROLLER_PLAN,
    CONTROLLER_EVENTS,
    CONTROLLER_COSTS,
    CONTROLLER_CONFIG,
    CONTROLLER_CONFIG_BLOBS,
)
