"""The agent's configuration: identity, broker, and the experts it can serve."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.onnx.artifact import is_export
from agent.requantize import RequantizeType
from agent.templates import Template
from messages.base import TOPIC_LEVEL_PATTERN, TOPIC_LEVEL_RE
from messages.settings import FleetSettings

ExecutionProvider = Literal[
    "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
]


def default_agent_id() -> str:
    host = socket.gethostname().split(".")[0]
    return host if TOPIC_LEVEL_RE.fullmatch(host) else "agent"


class ExpertConfig(BaseModel):
    """One expert: a model served with given runtime options."""

    model_config = ConfigDict(extra="forbid")

    # No "@" in expert ids: fleet-wide an expert is named "expert@agent".
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    model: str = Field(
        description="smollm2-135m, gemma3-270m, a path to a .gguf file, or (onnxruntime) a "
        "folder made by moe2 export-onnx"
    )
    backend: Literal["llama.cpp", "onnxruntime"] = Field(
        default="llama.cpp",
        description="Inference engine; a folder made by moe2 export-onnx defaults to onnxruntime",
    )
    n_ctx: int = Field(default=2048, ge=64, le=131072)
    n_threads: int | None = Field(default=None, ge=1)
    n_gpu_layers: int = Field(
        default=0, ge=-1, description="llama.cpp: layers offloaded to the GPU, -1 every layer"
    )
    providers: list[ExecutionProvider] | None = Field(
        default=None,
        min_length=1,
        description="onnxruntime: execution providers to try, in order (default: TensorRT, "
        "CUDA, CPU, those the installed onnxruntime has)",
    )
    chat_template: bool = Field(
        default=True,
        description="Wrap free-text prompts in the model's chat template, if it has one",
    )
    stop: list[str] = Field(default_factory=list, description="Stop generating at any of these")
    parallel: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Jobs served at once: llama.cpp decodes them together in one batch "
        "(continuous batching); onnxruntime serves one at a time whatever this says",
    )
    quantize: RequantizeType | None = Field(
        default=None,
        description="llama.cpp: serve the model re-quantised to Q8_0 or Q4_0 (converted once "
        "with llama.cpp's quantizer, cached under models in $MOE2_CACHE_DIR, else "
        "$XDG_CACHE_HOME/moe2): weight types "
        "with batched CPU kernels, so that parallel pays on a CPU; Q8_0 keeps 4- and 5-bit "
        "weights almost exactly",
    )
    template: Template = Field(
        default="cloze", description="How answer choices are scored: cloze, qa or letter"
    )

    @model_validator(mode="before")
    @classmethod
    def _backend_from_model(cls, data: object) -> object:
        if not isinstance(data, dict) or "backend" in data:
            return data
        model = data.get("model")
        if isinstance(model, str) and is_export(Path(model).expanduser()):
            return {**data, "backend": "onnxruntime"}
        return data

    @model_validator(mode="after")
    def _options_fit_backend(self) -> ExpertConfig:
        if self.backend == "onnxruntime" and self.n_gpu_layers != 0:
            raise ValueError(
                "n_gpu_layers is a llama.cpp option; an onnxruntime expert picks its device "
                'with providers (e.g. ["CUDAExecutionProvider", "CPUExecutionProvider"])'
            )
        if self.backend == "onnxruntime" and self.quantize is not None:
            raise ValueError(
                "quantize is a llama.cpp option (GGUF weights); an onnxruntime export keeps the "
                "weights moe2 export-onnx wrote"
            )
        if self.backend == "llama.cpp" and self.providers is not None:
            raise ValueError(
                "providers is an onnxruntime option; a llama.cpp expert offloads with n_gpu_layers"
            )
        return self

    @classmethod
    def parse_flag(cls, spec: str) -> ExpertConfig:
        """``ID=MODEL`` as given on the command line."""
        expert_id, sep, model = spec.partition("=")
        if not sep or not expert_id or not model:
            raise ValueError(f"--expert {spec!r}: expected ID=MODEL, e.g. smol=smollm2-135m")
        return cls(id=expert_id, model=model)


class AgentSettings(FleetSettings):
    agent_id: str = Field(default_factory=default_agent_id, pattern=TOPIC_LEVEL_PATTERN)
    experts: list[ExpertConfig] = Field(default_factory=list)
    telemetry_interval_s: float = Field(default=2.0, gt=0, le=3600)
    job_queue_capacity: int = Field(default=32, ge=1, le=10000)
    expert_memory_budget_mb: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Memory the loaded experts may take, MB; a plan that needs more is refused",
    )
    power_model_w: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Declared power draw while running a job, in W. On a device without a power "
        "sensor, energy is then estimated from this model and marked estimated",
    )
    power_idle_w: float = Field(
        default=0.0, ge=0, allow_inf_nan=False, description="Declared idle power, W"
    )
    power_sample_hz: float = Field(
        default=10.0, gt=0, le=1000, description="Power sampler rate where a sensor has no counter"
    )
    sysfs_root: Path = Field(
        default=Path("/sys"), description="Where to look for INA3221 and RAPL (a copy of /sys)"
    )

    @field_validator("experts", mode="before")
    @classmethod
    def _experts_from_flags(cls, value: object) -> object:
        if isinstance(value, list):
            return [ExpertConfig.parse_flag(v) if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _unique_experts(self) -> AgentSettings:
        ids = [e.id for e in self.experts]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"expert ids must be unique; repeated: {', '.join(dupes)}")
        return self
