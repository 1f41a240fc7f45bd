"""The base of every payload: strict, closed to unknown fields, versioned."""

from __future__ import annotations

import re
import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION = 1

# One MQTT topic level made of safe characters: ids of agents, experts and requests.
TOPIC_LEVEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
TopicLevel = Annotated[str, StringConstraints(pattern=TOPIC_LEVEL_PATTERN)]
TOPIC_LEVEL_RE = re.compile(TOPIC_LEVEL_PATTERN)

NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]

# Where an energy figure came from (DESIGN.md section 5). "estimate" is a declared power model.
EnergySource = Literal["ina3221", "jtop", "nvml", "rapl", "estimate"]


def now_s() -> float:
    """Wall-clock time in seconds since the epoch, as carried in messages."""
    return time.time()


class Message(BaseModel):
    """A payload on a fleet topic. Unknown fields are rejected; types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
