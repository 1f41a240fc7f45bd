"""The fleet's MoE² configuration as fleet state: ``FleetConfig`` on ``controller/config`` and
the artefacts it names, in ``ConfigChunk`` pieces on ``controller/config/blobs/{digest}/{index}``.

The active controller publishes both, retained. ``config_id`` is the sha256 of the canonical
content (everything but who published it and when): two controllers hold the same
configuration exactly when their ids agree. An artefact (the profile, the gate) is named by the
sha256 of its bytes; its zlib-compressed bytes are cut into chunks small enough for one payload
each, base64 in ``data``; a controller that fetches them checks the count, the size and the
sha256 before it keeps a byte (``controller/fleet_config.py``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from messages.base import ByteCount, DurationS, Message, TimestampS, TopicLevel
from messages.budgets import Budgets

SHA256_PATTERN = r"^[0-9a-f]{64}$"
Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]
# base64 of at most CHUNK_BYTES compressed bytes (controller/fleet_config.py), with room to spare
MAX_CHUNK_TEXT = 200_000
MAX_CHUNKS = 10_000


class ConfigArtefact(Message):
    """A file of the configuration: what it was called where it was made, its bytes' sha256
    and size."""

    name: str = Field(min_length=1, max_length=255, description="File name it was made under")
    sha256: Sha256
    size_bytes: ByteCount


class SelectionSettings(Message):
    """The selection and live-loop settings the plans depend on (controller/settings.py)."""

    aggregation_delay_s: DurationS
    selection_time_limit_s: DurationS
    drift_threshold: float = Field(gt=0, le=100, allow_inf_nan=False)
    drift_cooldown_s: DurationS
    cost_window: int = Field(ge=3, le=10_000)
    probe_interval_s: DurationS
    probe_timeout_s: DurationS
    newcomer_rate_hz: float = Field(gt=0, le=1000, allow_inf_nan=False)


class FleetConfig(Message):
    """The fleet's MoE² configuration in force, retained on ``controller/config``."""

    config_id: Sha256 = Field(description="sha256 of the canonical content (see module doc)")
    controller_id: TopicLevel = Field(description="The controller that published it")
    time_s: TimestampS
    profile: ConfigArtefact
    gate: ConfigArtefact
    budgets: Budgets = Field(description="The configured budgets (controller/budgets overrides)")
    settings: SelectionSettings


class ConfigChunk(Message):
    """One piece of an artefact's compressed bytes, retained on
    ``controller/config/blobs/{digest}/{index}``."""

    sha256: Sha256 = Field(description="The whole artefact's sha256 (of its bytes, uncompressed)")
    index: int = Field(ge=0, lt=MAX_CHUNKS)
    count: int = Field(ge=1, le=MAX_CHUNKS, description="Chunks of this artefact in all")
    data: str = Field(max_length=MAX_CHUNK_TEXT, description="base64 of the compressed piece")
