"""The MQTT contract of a moe2 fleet: every payload as a strict pydantic model, every topic once."""

from messages.answers import Answer, ExpertFailure, ExpertOutput
from messages.base import SCHEMA_VERSION, Message
from messages.budgets import Budgets
from messages.cache_plan import CachePlan
from messages.cancel import Cancel
from messages.capabilities import AgentCapabilities, ExpertInfo
from messages.codec import MAX_PAYLOAD_BYTES, PayloadError, decode, encode
from messages.controller import ControllerEvent, ControllerStatus, FleetPlan
from messages.costs import CostTable, ExpertCostRow
from messages.events import AgentEvent
from messages.jobs import Job
from messages.plan import ActivationPlan
from messages.prompt_cancel import PromptCancel
from messages.prompts import ChatMessage, Prompt
from messages.results import EnergyReading, JobResult, LatencyBreakdown
from messages.status import AgentStatus
from messages.stream import StreamChunk
from messages.telemetry import Telemetry
from messages.topics import TOPICS, Topic

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "SCHEMA_VERSION",
    "TOPICS",
    "ActivationPlan",
    "AgentCapabilities",
    "AgentEvent",
    "AgentStatus",
    "Answer",
    "Budgets",
    "CachePlan",
    "Cancel",
    "ChatMessage",
    "ControllerEvent",
    "ControllerStatus",
    "CostTable",
    "EnergyReading",
    "ExpertFailure",
    "ExpertInfo",
    "ExpertOutput",
    "ExpertCostRow",
    "FleetPlan",
    "Job",
    "JobResult",
    "LatencyBreakdown",
    "Message",
    "PayloadError",
    "Prompt",
    "PromptCancel",
    "StreamChunk",
    "Telemetry",
    "Topic",
    "decode",
    "encode",
]
