"""A fleet profile: every expert's choice distribution, compute and transmission time, and energy
on every suite item, measured through the real agents. The gate is trained on it and the
selection instances are built from it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.suite import SuiteItem
from messages.base import NonNegativeFloat, Probability


class ProfileError(ValueError):
    """A profile file that cannot be used."""


class ExpertProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="expert@agent")
    expert_id: str
    agent_id: str
    model: str
    template: str


class Measurement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    choice_probs: list[Probability]
    compute_s: NonNegativeFloat
    transmission_s: NonNegativeFloat
    energy_j: NonNegativeFloat | None = None
    energy_source: str | None = None


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    fleet: str
    suite_sha256: str
    items: list[SuiteItem]
    experts: dict[str, ExpertProfile] = Field(default_factory=dict)
    records: dict[str, dict[str, Measurement]] = Field(
        default_factory=dict, description="item id -> expert key -> measurement"
    )

    def missing(self, item: SuiteItem) -> list[str]:
        """Expert keys with no measurement for this item yet."""
        done = self.records.get(item.id, {})
        return [key for key in self.experts if key not in done]

    def complete_items(self, keys: list[str] | None = None) -> list[SuiteItem]:
        """Items measured on every expert (or on every one of ``keys``)."""
        wanted = keys if keys is not None else list(self.experts)
        return [i for i in self.items if all(k in self.records.get(i.id, {}) for k in wanted)]

    def check_fleet(self, fleet: str) -> None:
        if fleet != self.fleet:
            raise ProfileError(f"the profile is of fleet {self.fleet!r}, not {fleet!r}")


def suite_digest(items: list[SuiteItem]) -> str:
    text = "".join(i.model_dump_json() + "\n" for i in items)
    return hashlib.sha256(text.encode()).hexdigest()


def load_profile(path: Path) -> Profile:
    if not path.is_file():
        raise ProfileError(f"profile {path} does not exist (make one with `moe2 profile`)")
    try:
        profile = Profile.model_validate_json(path.read_text())
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProfileError(f"profile {path} is invalid: {where}: {first['msg']}") from None
    if profile.schema_version != 1:
        raise ProfileError(f"profile {path} has unknown schema_version {profile.schema_version}")
    by_id = {i.id: i for i in profile.items}
    for item_id, row in profile.records.items():
        item = by_id.get(item_id)
        if item is None:
            raise ProfileError(f"profile {path}: record for unknown item {item_id!r}")
        for key, m in row.items():
            if key not in profile.experts:
                raise ProfileError(f"profile {path}: record for unknown expert {key!r}")
            if len(m.choice_probs) != len(item.choices) or abs(sum(m.choice_probs) - 1) > 1e-3:
                raise ProfileError(
                    f"profile {path}: {key} on {item_id}: choice_probs is not a distribution "
                    f"over {len(item.choices)} choices"
                )
    return profile


def save_profile(profile: Profile, path: Path) -> None:
    """Atomically: an interrupted save never leaves a half-written profile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(profile.model_dump(mode="json"), separators=(",", ":")))
    os.replace(tmp, path)
