"""A prompt anyone may publish for the fleet to answer."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from messages.base import Message, TopicLevel
from messages.budgets import Budgets


class Prompt(Message):
    prompt: str = Field(min_length=1)
    request_id: TopicLevel | None = Field(
        default=None, description="Chosen by the asker, or assigned by the controller"
    )
    choices: list[str] | None = Field(default=None, min_length=2, max_length=26)
    question: str | None = Field(
        default=None, min_length=1, description="The prompt as a question, for QA templates"
    )
    max_tokens: int = Field(default=64, ge=1, le=4096)
    timeout_s: float = Field(default=60.0, gt=0, le=3600, allow_inf_nan=False)
    experts: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Restrict to these experts, as 'expert' or 'expert@agent'",
    )
    category: str | None = Field(
        default=None, description="Application category, for per-category delay budgets"
    )
    budgets: Budgets | None = Field(
        default=None, description="Tighter budgets for this prompt than those in force"
    )
    reply_to: str | None = Field(
        default=None,
        description="Extra topic for the answer (for MQTT 3.1.1, which has no response topic)",
    )

    @field_validator("reply_to")
    @classmethod
    def _reply_to_is_publishable(cls, value: str | None) -> str | None:
        if value is not None and (not value or "+" in value or "#" in value or "\0" in value):
            raise ValueError("reply_to must be a topic name without wildcards")
        return value

    @model_validator(mode="after")
    def _choices_are_nonempty(self) -> Prompt:
        if self.choices is not None and any(not c.strip() for c in self.choices):
            raise ValueError("choices must be non-empty strings")
        return self
