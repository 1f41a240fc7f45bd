"""The fleet's configuration, pure: its content hash, an artefact cut into chunks and put back
together (verified), where a verified artefact is kept, and whether a controller adopts the
fleet's configuration, keeps its own, replaces the fleet's or refuses to lead.

No MQTT here: ``controller/config_sync.py`` keeps the state between messages, and the service
publishes what it says.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from controller.settings import ControllerSettings
from messages.base import now_s
from messages.budgets import Budgets
from messages.fleet_config import (
    MAX_CHUNKS,
    ConfigArtefact,
    ConfigChunk,
    FleetConfig,
    SelectionSettings,
)

CHUNK_BYTES = 96 * 1024  # compressed bytes per chunk: its base64 fits one payload with room
_SETTINGS = tuple(n for n in SelectionSettings.model_fields if n in ControllerSettings.model_fields)


class ConfigError(ValueError):
    """A configuration or artefact that cannot be used; the message says which and why."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def config_id(
    profile: ConfigArtefact, gate: ConfigArtefact, budgets: Budgets, settings: SelectionSettings
) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of what the plans depend on: the
    artefacts' hashes and sizes (not their names), the budgets, the selection settings."""
    content = {
        "profile": [profile.sha256, profile.size_bytes],
        "gate": [gate.sha256, gate.size_bytes],
        "budgets": budgets.model_dump(mode="json"),
        "settings": settings.model_dump(mode="json"),
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return sha256_hex(canonical.encode("utf-8"))


def artefact_of(path: Path) -> tuple[ConfigArtefact, bytes]:
    """A file as an artefact, with its bytes; ConfigError when it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    return ConfigArtefact(name=path.name, sha256=sha256_hex(data), size_bytes=len(data)), data


def selection_settings(settings: ControllerSettings) -> SelectionSettings:
    return SelectionSettings(**{name: getattr(settings, name) for name in _SETTINGS})


def configured_budgets(settings: ControllerSettings) -> Budgets:
    return Budgets(
        energy_j=settings.energy_budget_j,
        delay_s=dict(settings.delay_budget_s),
        top_k=settings.top_k,
    )


@dataclass(frozen=True)
class LocalConfig:
    """A configuration this controller holds, with the artefacts' bytes to publish."""

    config: FleetConfig
    blobs: dict[str, bytes]  # sha256 -> bytes

    @classmethod
    def of_files(cls, config: FleetConfig, profile: Path, gate: Path) -> LocalConfig:
        """The fleet's configuration, held from its artefacts stored here."""
        files = ((config.profile, profile), (config.gate, gate))
        return cls(config, {artefact.sha256: path.read_bytes() for artefact, path in files})

    def publication(self, controller_id: str) -> tuple[list[ConfigChunk], FleetConfig]:
        """What publishes it: every artefact's chunks, then the configuration (ours now)."""
        chunks = [chunk for data in self.blobs.values() for chunk in chunks_of(data)]
        update = {"controller_id": controller_id, "time_s": now_s()}
        return chunks, self.config.model_copy(update=update)


def local_config(settings: ControllerSettings, controller_id: str) -> LocalConfig | None:
    """The configuration of these settings (None without a profile and a gate)."""
    if settings.profile is None or settings.gate is None:
        return None
    profile, profile_bytes = artefact_of(settings.profile)
    gate, gate_bytes = artefact_of(settings.gate)
    budgets, chosen = configured_budgets(settings), selection_settings(settings)
    config = FleetConfig(
        config_id=config_id(profile, gate, budgets, chosen),
        controller_id=controller_id,
        time_s=now_s(),
        profile=profile,
        gate=gate,
        budgets=budgets,
        settings=chosen,
    )
    return LocalConfig(config, {profile.sha256: profile_bytes, gate.sha256: gate_bytes})


def check_config(config: FleetConfig) -> None:
    """A fleet configuration whose id is not the hash of its content is refused."""
    expected = config_id(config.profile, config.gate, config.budgets, config.settings)
    if expected != config.config_id:
        raise ConfigError(
            f"configuration {short(config.config_id)} from {config.controller_id}: its id is not "
            f"the hash of its content ({short(expected)})"
        )


def chunks_of(data: bytes) -> list[ConfigChunk]:
    """An artefact's bytes, compressed and cut into pieces of at most CHUNK_BYTES."""
    digest, packed = sha256_hex(data), zlib.compress(data, 6)
    pieces = [packed[i : i + CHUNK_BYTES] for i in range(0, len(packed), CHUNK_BYTES)] or [b""]
    if len(pieces) > MAX_CHUNKS:
        raise ConfigError(f"artefact {short(digest)} needs {len(pieces)} chunks (max {MAX_CHUNKS})")
    return [
        ConfigChunk(
            sha256=digest,
            index=i,
            count=len(pieces),
            data=base64.b64encode(piece).decode("ascii"),
        )
        for i, piece in enumerate(pieces)
    ]


def missing(chunks: dict[int, ConfigChunk]) -> list[int] | None:
    """Indexes still missing (None: no chunk yet, so the count is unknown)."""
    if not chunks:
        return None
    count = max(c.count for c in chunks.values())
    return [i for i in range(count) if i not in chunks]


def reassemble(artefact: ConfigArtefact, chunks: dict[int, ConfigChunk]) -> bytes:
    """The artefact's bytes from its chunks (by index), verified: every chunk present and of
    one count, decodable, and the result of the size and sha256 the configuration names.
    ConfigError says what is wrong; nothing is returned half."""
    label = f"{artefact.name} ({short(artefact.sha256)})"
    gaps = missing(chunks)
    if gaps is None or gaps:
        return _fail(label, "no chunk" if gaps is None else f"chunks {_span(gaps)} missing")
    counts = {c.count for c in chunks.values()}
    if len(counts) > 1 or any(c.sha256 != artefact.sha256 for c in chunks.values()):
        return _fail(label, f"chunks disagree (counts {sorted(counts)})")
    try:
        packed = b"".join(
            base64.b64decode(chunks[i].data, validate=True) for i in range(len(chunks))
        )
        data = zlib.decompress(packed)
    except (binascii.Error, zlib.error) as exc:
        return _fail(label, f"chunks do not decode: {exc}")
    if len(data) != artefact.size_bytes:
        return _fail(label, f"{len(data)} bytes reassembled, {artefact.size_bytes} named")
    digest = sha256_hex(data)
    if digest != artefact.sha256:
        return _fail(label, f"sha256 mismatch: the reassembled bytes hash to {short(digest)}")
    return data


def _fail(label: str, why: str) -> bytes:
    raise ConfigError(f"{label}: {why}")


def _span(indexes: list[int]) -> str:
    shown = ", ".join(str(i) for i in indexes[:8])
    return shown + (f" (+{len(indexes) - 8} more)" if len(indexes) > 8 else "")


def short(digest: str) -> str:
    return digest[:12]


def stored_path(folder: Path, artefact: ConfigArtefact) -> Path:
    """Where a verified artefact is kept: named by its hash, with its own file's suffix."""
    return folder / f"{artefact.sha256}{Path(artefact.name).suffix}"


def stored(folder: Path, artefact: ConfigArtefact) -> Path | None:
    """The artefact kept earlier, if its bytes still hash right (else None)."""
    path = stored_path(folder, artefact)
    try:
        return path if sha256_hex(path.read_bytes()) == artefact.sha256 else None
    except OSError:
        return None


def store(folder: Path, artefact: ConfigArtefact, data: bytes) -> Path:
    """Keep verified bytes, whole or not at all (a temporary file renamed into place)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = stored_path(folder, artefact)
    temporary = path.with_name(path.name + f".{os.getpid()}.part")
    temporary.write_bytes(data)
    os.replace(temporary, path)
    return path


def adopted_settings(
    settings: ControllerSettings, config: FleetConfig, profile: Path, gate: Path
) -> ControllerSettings:
    """This controller's settings with the fleet's configuration in force."""
    budgets = config.budgets
    update = {
        "profile": profile,
        "gate": gate,
        "energy_budget_j": budgets.energy_j,
        "delay_budget_s": dict(budgets.delay_s),
        "top_k": budgets.top_k,
        **{name: getattr(config.settings, name) for name in _SETTINGS},
    }
    return settings.model_copy(update=update)


Decision = Literal["none", "publish", "keep", "adopt", "refuse", "replace"]


def decide(own: FleetConfig | None, fleet: FleetConfig | None, replace: bool) -> Decision:
    """What a controller does with its own configuration (the command line's; None: started
    bare) and the fleet's (None: none published):

    - ``none``: neither; a controller as before fleet configurations.
    - ``publish``: the fleet has none: ours becomes the fleet's when we lead.
    - ``keep``: the same (same id).
    - ``adopt``: started bare: take the fleet's before leading.
    - ``replace``: another, and told to replace it (``--replace-config``): ours is published.
    - ``refuse``: another, not told to replace it: say so, and never lead with ours.
    """
    if own is None:
        return "none" if fleet is None else "adopt"
    if fleet is None:
        return "publish"
    if own.config_id == fleet.config_id:
        return "keep"
    return "replace" if replace else "refuse"


def describe(config: FleetConfig) -> str:
    """One line: id, profile and gate (name and hash), budgets."""
    budgets = config.budgets
    parts = [
        f"energy {budgets.energy_j:g} J" if budgets.energy_j is not None else None,
        ", ".join(f"{c} {s:g} s" for c, s in sorted(budgets.delay_s.items())) or None,
        f"top-{budgets.top_k}" if budgets.top_k is not None else None,
    ]
    shown = "; ".join(p for p in parts if p) or "no budgets"
    return (
        f"configuration {short(config.config_id)}: profile {config.profile.name} "
        f"({short(config.profile.sha256)}), gate {config.gate.name} "
        f"({short(config.gate.sha256)}), {shown}"
    )
