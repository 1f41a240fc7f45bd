"""Retained description of what an agent has and can serve."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from messages.base import MAX_TOKENS, ByteCount, CpuCount, Message, TopicLevel

BackendName = Literal["llama.cpp", "onnxruntime"]
PowerSensorKind = Literal["ina3221", "jtop", "nvml", "rapl", "none"]


class ExpertInfo(Message):
    expert_id: TopicLevel
    model: str = Field(description="Model name or path as configured")
    backend: BackendName
    format: Literal["gguf", "onnx"]
    file_size_bytes: ByteCount
    memory_bytes: ByteCount | None = Field(default=None, description="Resident size when loaded")
    quantisation: str | None = None
    context_length: int = Field(ge=1, le=MAX_TOKENS)
    chat_template: bool = Field(
        description="Whether free-text prompts use the model's chat template"
    )
    template: Literal["cloze", "qa", "letter"] = Field(description="How choices are scored")
    providers: list[str] | None = Field(
        default=None,
        description="onnxruntime: the execution providers the loaded session really uses "
        "(get_providers(), not the ones asked for)",
    )
    parallel: int = Field(
        default=1, ge=1, le=1024, description="Jobs the expert serves at once (its slots)"
    )


class AgentCapabilities(Message):
    agent_id: TopicLevel
    hostname: str
    platform: str = Field(description="OS and machine, e.g. Linux-aarch64")
    python: str
    cpu_count: CpuCount
    memory_total_bytes: ByteCount
    accelerator: str | None = None
    power_sensor: PowerSensorKind
    backends: list[BackendName]
    experts: list[ExpertInfo]
    job_queue_capacity: int = Field(ge=1, le=1_000_000)
    expert_memory_budget_bytes: ByteCount | None = Field(
        default=None, description="Memory the agent may fill with loaded experts"
    )
