"""The request bodies the gateway reads: OpenAI's chat and text completions, plus the fleet's
own fields under ``"moe2"``.

Unknown OpenAI fields are ignored; those that would change the output and that moe2 does not
support are refused by name (:meth:`RequestBody.refuse_unsupported`). Turning a body into the
fleet's ``Prompt`` is ``moe2.gateway.translate``'s job."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from moe2.gateway.errors import GatewayError


class Moe2Options(BaseModel):
    """The fleet's own fields of a request, under ``"moe2"``."""

    model_config = ConfigDict(extra="forbid")

    energy_j: float | None = Field(default=None, ge=0, description="Energy budget, J")
    delay_s: float | dict[str, float] | None = Field(
        default=None, description="Delay budget, s: for the request's category, or per category"
    )
    category: str | None = None
    top_k: int | None = Field(default=None, ge=1, description="Experts that answer, at most")
    experts: list[str] | None = Field(default=None, min_length=1)
    timeout_s: float | None = Field(default=None, gt=0, le=3600)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``: only ``{"type": "text"}`` (the default) is honoured."""

    model_config = ConfigDict(extra="allow")
    type: str

    def refuse_unless_text(self) -> None:
        """A 400 for a format the fleet cannot guarantee: its experts are small models that
        generate free text, with no constrained decoding, so JSON output would be a hope."""
        if self.type == "text":
            return
        if self.type in ("json_object", "json_schema"):
            raise GatewayError(
                400,
                f"response_format {self.type} is not supported: moe2's experts generate free "
                "text with no constrained decoding, so the fleet cannot guarantee JSON; ask for "
                'JSON in the prompt and parse the text, or leave response_format as {"type": '
                '"text"}',
                param="response_format",
            )
        raise GatewayError(
            400,
            f"response_format type {self.type!r} is unknown; moe2 honours only text",
            param="response_format",
        )


class RequestBody(BaseModel):
    """What chat and text completions share. Unknown OpenAI fields are ignored; those that
    would change the output and are not supported are refused by name."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=1000)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1)
    response_format: ResponseFormat | None = None
    moe2: Moe2Options | None = None

    UNSUPPORTED: tuple[str, ...] = ("tools", "functions", "logit_bias", "best_of", "suffix")

    def refuse_unsupported(self) -> None:
        if self.n != 1:
            raise GatewayError(400, "n must be 1: moe2 gives one (ensemble) answer", param="n")
        for name in self.UNSUPPORTED:
            if (self.model_extra or {}).get(name) not in (None, [], {}):
                raise GatewayError(400, f"{name} is not supported by moe2", param=name)
        for name in ("presence_penalty", "frequency_penalty"):
            if (self.model_extra or {}).get(name) not in (None, 0, 0.0):
                raise GatewayError(400, f"{name} is not supported by moe2", param=name)
        if (self.model_extra or {}).get("logprobs") not in (None, False, 0):
            raise GatewayError(400, "logprobs is not supported by moe2", param="logprobs")
        if self.response_format is not None:
            self.response_format.refuse_unless_text()


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise GatewayError(
                    400, "only text content parts are supported", param="messages.content"
                )
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(RequestBody):
    messages: list[ChatTurn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)


class CompletionRequest(RequestBody):
    prompt: str | list[str]
