"""A prompt anyone may publish for the fleet to answer: a bare prompt or chat turns, with
sampling options (greedy by default)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from messages.base import Message, TopicLevel
from messages.budgets import Budgets

MAX_TURNS = 256
MAX_STOPS = 4
MAX_SEED = 2**31 - 1


class ChatMessage(Message):
    """One chat turn, rendered with each model's own chat template."""

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=200_000)


class GenerationOptions(Message):
    """Chat turns and sampling, shared by a prompt and the jobs made from it. The defaults are
    greedy decoding: ``temperature`` 0 picks the most likely token, whatever the rest say."""

    messages: list[ChatMessage] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TURNS,
        description="Chat turns (system, user, assistant) instead of a bare prompt",
    )
    temperature: float = Field(
        default=0.0, ge=0, le=2, allow_inf_nan=False, description="0: greedy (the default)"
    )
    top_p: float = Field(
        default=1.0, gt=0, le=1, allow_inf_nan=False, description="Nucleus sampling mass"
    )
    top_k: int = Field(default=0, ge=0, le=1000, description="Sample among this many; 0: all")
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="With temperature > 0: a repeatable draw"
    )
    stop: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_STOPS,
        description="Stop at any of these strings (cut from the text)",
    )
    stream: bool = Field(
        default=False,
        description="Stream tokens: the leading expert's text on answers/{request_id}/stream",
    )

    @field_validator("stop")
    @classmethod
    def _stops_are_nonempty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not s or len(s) > 64 for s in value):
            raise ValueError("stop strings must be 1-64 characters")
        return value

    @field_validator("messages")
    @classmethod
    def _a_user_turn(cls, value: list[ChatMessage] | None) -> list[ChatMessage] | None:
        if value is not None and not any(m.role == "user" and m.content.strip() for m in value):
            raise ValueError("messages need at least one non-empty user turn")
        return value

    @property
    def sampling(self) -> dict[str, Any]:
        """The sampling fields, as a job carries them."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": self.stop,
        }


def last_user_turn(messages: Any) -> str | None:
    """The content of the last non-empty user turn of raw or validated ``messages``."""
    if not isinstance(messages, list):
        return None
    for turn in reversed(messages):
        role = turn.get("role") if isinstance(turn, dict) else getattr(turn, "role", None)
        text = turn.get("content") if isinstance(turn, dict) else getattr(turn, "content", None)
        if role == "user" and isinstance(text, str) and text.strip():
            return text
    return None


class Prompt(GenerationOptions):
    prompt: str | None = Field(
        default=None,
        min_length=1,
        description="The prompt; with messages, optional: the last user turn stands in for it "
        "(the gate routes on it), and the models see the messages",
    )
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

    @model_validator(mode="before")
    @classmethod
    def _prompt_from_messages(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("prompt") is None and data.get("messages"):
            text = last_user_turn(data["messages"])
            if text is not None:
                data = {**data, "prompt": text}
        return data

    @field_validator("reply_to")
    @classmethod
    def _reply_to_is_publishable(cls, value: str | None) -> str | None:
        if value is not None and (not value or "+" in value or "#" in value or "\0" in value):
            raise ValueError("reply_to must be a topic name without wildcards")
        return value

    @model_validator(mode="after")
    def _choices_are_nonempty(self) -> Prompt:
        if self.prompt is None:
            raise ValueError("a prompt carries prompt or messages")
        if self.choices is not None and any(not c.strip() for c in self.choices):
            raise ValueError("choices must be non-empty strings")
        if self.choices is not None and self.messages is not None:
            raise ValueError("choices are scored after a bare prompt, not after messages")
        if self.choices is not None and self.stream:
            raise ValueError("stream is for free-text prompts: choices produce no tokens")
        return self
