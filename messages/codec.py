"""Bytes on the wire to typed messages and back, with the size limit every receiver enforces."""

from __future__ import annotations

from typing import TypeVar

from pydantic import ValidationError

from messages.base import Message

M = TypeVar("M", bound=Message)

MAX_PAYLOAD_BYTES = 256 * 1024


class PayloadError(ValueError):
    """A payload that was rejected; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode(message: Message) -> bytes:
    return message.model_dump_json(exclude_none=False).encode("utf-8")


def check_size(payload: bytes, limit: int = MAX_PAYLOAD_BYTES) -> None:
    if len(payload) > limit:
        raise PayloadError(f"payload of {len(payload)} bytes is over the {limit}-byte limit")


def decode(message_type: type[M], payload: bytes, limit: int = MAX_PAYLOAD_BYTES) -> M:
    """Validate a JSON payload against its message type; raise PayloadError with a reason."""
    check_size(payload, limit)
    try:
        return message_type.model_validate_json(payload)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if errors and errors[0]["type"] == "json_invalid":
            raise PayloadError(f"not valid JSON: {errors[0]['msg']}") from None
        parts = [
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errors[:5]
        ]
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        raise PayloadError(
            f"does not match {message_type.__name__} schema: " + "; ".join(parts) + more
        ) from None


def decode_text(payload: bytes, limit: int = MAX_PAYLOAD_BYTES) -> str:
    """A bare UTF-8 text payload (``prompts/text``), stripped; empty is an error."""
    check_size(payload, limit)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"not valid UTF-8 at byte {exc.start}") from None
    if not text.strip():
        raise PayloadError("empty prompt")
    return text.strip()
