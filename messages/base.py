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

# Bounds on every number a message carries. Floats are finite and far from overflow: a sum of
# any plausible number of bounded values stays finite (1e15 * 1e290 would still fit a double),
# and ints are bounded so a JSON literal like 10**400 is refused, not carried as a bignum.
MAX_FLOAT = 1e15  # any non-negative float without a more specific bound
MAX_SECONDS = 1e6  # durations: latencies, timeouts, intervals (11.6 days)
MAX_TIMESTAMP_S = 1e10  # wall-clock seconds since the epoch (year 2286)
MAX_ENERGY_J = 1e12  # one energy reading, one expert's result, one budget
MAX_TOTAL_ENERGY_J = 1e15  # a sum over experts (an answer): 1000 results at MAX_ENERGY_J
MAX_POWER_W = 1e7
MAX_COUNT = 2**53 - 1  # counters and byte sizes: exact in a double and in JavaScript
MAX_TOKENS = 100_000_000
MAX_CPUS = 1_000_000
MAX_PLAN_EPOCH = 2**53 - 1

NonNegativeFloat = Annotated[float, Field(ge=0, le=MAX_FLOAT, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(ge=-MAX_FLOAT, le=MAX_FLOAT, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
DurationS = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
TimestampS = Annotated[float, Field(ge=0, le=MAX_TIMESTAMP_S, allow_inf_nan=False)]
EnergyJ = Annotated[float, Field(ge=0, le=MAX_ENERGY_J, allow_inf_nan=False)]
TotalEnergyJ = Annotated[float, Field(ge=0, le=MAX_TOTAL_ENERGY_J, allow_inf_nan=False)]
PowerW = Annotated[float, Field(ge=0, le=MAX_POWER_W, allow_inf_nan=False)]
Celsius = Annotated[float, Field(ge=-273.15, le=10_000, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
ByteCount = Annotated[int, Field(ge=0, le=MAX_COUNT)]
TokenCount = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
CpuCount = Annotated[int, Field(ge=1, le=MAX_CPUS)]
PlanEpoch = Annotated[int, Field(ge=0, le=MAX_PLAN_EPOCH)]
# A controller's leadership term: 1 + the highest term it had seen when it took over.
Term = Annotated[int, Field(ge=0, le=MAX_COUNT)]
TERM_DOC = "Leadership term of the controller that sent it (None: a controller before terms)"

# Where an energy figure came from (docs/design.md section 5). "estimate" is a declared power model.
EnergySource = Literal["ina3221", "jtop", "nvml", "rapl", "estimate"]


def now_s() -> float:
    """Wall-clock time in seconds since the epoch, as carried in messages."""
    return time.time()


class Message(BaseModel):
    """A payload on a fleet topic. Unknown fields are rejected; types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
