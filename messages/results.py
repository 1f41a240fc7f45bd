"""What an agent answers to a job: output, token counts, latency breakdown, measured energy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from messages.base import (
    DurationS,
    EnergyJ,
    EnergySource,
    FiniteFloat,
    Message,
    Probability,
    TokenCount,
    TopicLevel,
)
from messages.jobs import JOB_DIGEST_CHARS


class LatencyBreakdown(Message):
    queue_s: DurationS = Field(description="Waiting in the agent's job queue")
    load_s: DurationS = Field(description="Loading the expert, when it was not loaded")
    first_token_s: DurationS | None = Field(
        default=None, description="From start of inference to the first token or choice score"
    )
    total_s: DurationS = Field(description="From receipt to result")


class EnergyReading(Message):
    energy_j: EnergyJ
    source: EnergySource
    estimated: bool = Field(description="True when from a power model, not a sensor")


class JobResult(Message):
    request_id: TopicLevel
    expert_id: TopicLevel
    agent_id: TopicLevel
    ok: bool
    error: str | None = None
    text: str | None = None
    choice_logprobs: list[FiniteFloat] | None = None
    choice_probs: list[Probability] | None = None
    finish_reason: Literal["stop", "length", "deadline", "scored"] | None = None
    prompt_tokens: TokenCount = 0
    completion_tokens: TokenCount = 0
    latency: LatencyBreakdown
    energy: EnergyReading | None = None
    job_digest: str | None = Field(
        default=None,
        pattern=rf"^[0-9a-f]{{{JOB_DIGEST_CHARS}}}$",
        description="The digest of the job this answers (Job.digest): a result is bound to its "
        "job's content, not to its request id alone",
    )

    @model_validator(mode="after")
    def _consistent(self) -> JobResult:
        if self.ok and self.text is None and self.choice_probs is None:
            raise ValueError("a successful result carries text or choice_probs")
        if not self.ok and not self.error:
            raise ValueError("a failed result carries an error")
        if (self.choice_probs is None) != (self.choice_logprobs is None):
            raise ValueError("choice_probs and choice_logprobs come together")
        if self.choice_probs is not None:
            if len(self.choice_probs) != len(self.choice_logprobs or []):
                raise ValueError("choice_probs and choice_logprobs differ in length")
            if abs(sum(self.choice_probs) - 1.0) > 1e-3:
                raise ValueError("choice_probs must sum to 1")
        return self
