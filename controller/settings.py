"""The controller's configuration."""

from __future__ import annotations

from pydantic import Field

from messages.settings import FleetSettings


class ControllerSettings(FleetSettings):
    default_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="Deadline of a prompt that names none"
    )
    status_interval_s: float = Field(default=5.0, gt=0, le=3600)
    silence_factor: float = Field(
        default=3.0,
        ge=1.5,
        description="An agent is offline after this many telemetry intervals without a message",
    )
    max_pending_requests: int = Field(default=256, ge=1)
