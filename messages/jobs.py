"""One inference job sent by the controller to one expert on one agent."""

from __future__ import annotations

import hashlib
import json

from pydantic import Field, model_validator

from messages.base import TERM_DOC, Term, TimestampS, TopicLevel
from messages.prompts import GenerationOptions

# What a job is: not when it was issued nor how long it may still take (a job re-sent after a
# reconnect or a takeover is the same job), nor whether it streams (the result is the same).
JOB_CONTENT_FIELDS = frozenset(
    {
        "request_id",
        "expert_id",
        "prompt",
        "choices",
        "question",
        "max_tokens",
        "messages",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
    }
)
# Hex digits of a job's digest (128 bits).
JOB_DIGEST_CHARS = 32


class Job(GenerationOptions):
    """``messages``, when given, are what the model sees (``prompt`` is then their last user
    turn); the sampling fields default to greedy decoding."""

    request_id: TopicLevel
    expert_id: TopicLevel
    prompt: str = Field(min_length=1)
    choices: list[str] | None = Field(default=None, min_length=2, max_length=26)
    question: str | None = Field(
        default=None, min_length=1, description="The prompt as a question, for QA templates"
    )
    max_tokens: int = Field(default=64, ge=1, le=4096)
    timeout_s: float = Field(
        gt=0, le=3600, allow_inf_nan=False, description="From receipt; an expired job is not run"
    )
    issued_s: TimestampS
    term: Term | None = Field(
        default=None, description=f"{TERM_DOC}; agents drop a job of a lower term than their plan"
    )

    @model_validator(mode="after")
    def _choices_are_nonempty(self) -> Job:
        if self.choices is not None and any(not c.strip() for c in self.choices):
            raise ValueError("choices must be non-empty strings")
        if self.choices is not None and self.messages is not None:
            raise ValueError("choices are scored after a bare prompt, not after messages")
        return self

    def digest(self) -> str:
        """What this job is, as hex: its request id, expert, prompt, choices, turns and
        sampling. The same job re-sent has the same digest; another prompt sent under the same
        request id has another, so a result kept for the first is never the second's."""
        content = self.model_dump(include=set(JOB_CONTENT_FIELDS), mode="json")
        text = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:JOB_DIGEST_CHARS]
