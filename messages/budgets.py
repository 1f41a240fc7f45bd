"""Energy and delay budgets: fleet-wide on ``controller/budgets``, or tighter in one prompt."""

from __future__ import annotations

from pydantic import Field

from messages.base import DurationS, Message, TotalEnergyJ


class Budgets(Message):
    energy_j: TotalEnergyJ | None = Field(
        default=None, description="Energy per query, J (None: unlimited)"
    )
    delay_s: dict[str, DurationS] = Field(
        default_factory=dict, description="Delay per application category, s"
    )
    top_k: int | None = Field(
        default=None, ge=1, le=10_000, description="At most this many experts answer each prompt"
    )
