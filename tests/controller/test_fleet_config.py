"""The fleet configuration's pure parts: its content hash, artefacts chunked and put back
together (verified), where they are kept, the adopt/keep/refuse/replace decision, the sync's
state between messages, and the election's rule that a controller with a config problem does
not lead."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.config_sync import ConfigSync
from controller.fleet_config import (
    ConfigError,
    LocalConfig,
    check_config,
    chunks_of,
    decide,
    local_config,
    reassemble,
    stored,
)
from controller.leadership import should_lead
from controller.settings import ControllerSettings
from messages import topics
from messages.budgets import Budgets
from messages.codec import MAX_PAYLOAD_BYTES, encode
from messages.controller import ControllerStatus
from messages.fleet_config import ConfigChunk, FleetConfig


def _files(folder: Path, gate_bytes: bytes = b"gate-weights") -> tuple[Path, Path]:
    profile, gate = folder / "profile.json", folder / "gate.pt"
    profile.write_bytes(b'{"fleet": "f"}' + os.urandom(300_000))  # incompressible: 4 chunks
    gate.write_bytes(gate_bytes)
    return profile, gate


def _settings(profile: Path, gate: Path, **more: object) -> ControllerSettings:
    return ControllerSettings(fleet="f", profile=profile, gate=gate, **more)


def _local(folder: Path, **more: object) -> LocalConfig:
    profile, gate = folder / "profile.json", folder / "gate.pt"
    config = local_config(_settings(profile, gate, **more), "c1")
    assert config is not None
    return config


def test_the_id_is_the_hash_of_what_plans_depend_on(tmp_path: Path) -> None:
    _files(tmp_path)
    one = _local(tmp_path).config
    assert _local(tmp_path).config.config_id == one.config_id  # same files and settings
    assert _local(tmp_path, energy_budget_j=3.0).config.config_id != one.config_id
    assert _local(tmp_path, drift_threshold=0.3).config.config_id != one.config_id
    (tmp_path / "gate.pt").write_bytes(b"other weights")
    assert _local(tmp_path).config.config_id != one.config_id
    # who published it and when are not content
    moved = one.model_copy(update={"controller_id": "c2", "time_s": one.time_s + 60})
    check_config(moved)
    forged = one.model_copy(update={"budgets": Budgets(energy_j=1.0)})
    with pytest.raises(ConfigError, match="not the hash of its content"):
        check_config(forged)
    assert local_config(ControllerSettings(fleet="f"), "c1") is None  # bare: nothing to hold


def test_chunks_fit_a_payload_and_reassemble_verified(tmp_path: Path) -> None:
    _files(tmp_path)
    held = _local(tmp_path)
    profile = held.config.profile
    chunks = chunks_of(held.blobs[profile.sha256])
    assert len(chunks) == 4  # 300 kB that do not compress, 96 KiB a chunk
    assert all(len(encode(c)) < MAX_PAYLOAD_BYTES for c in chunks)
    by_index = {c.index: c for c in chunks}
    assert reassemble(profile, by_index) == held.blobs[profile.sha256]
    name = topics.CONTROLLER_CONFIG_BLOBS.name("f", digest=profile.sha256, index="0")
    assert name == f"moe2/f/controller/config/blobs/{profile.sha256}/0"

    with pytest.raises(ConfigError, match="chunks 1 missing"):
        reassemble(profile, {i: c for i, c in by_index.items() if i != 1})
    with pytest.raises(ConfigError, match="no chunk"):
        reassemble(profile, {})
    other = chunks_of(b"x" * 10)[0]  # a chunk of other bytes in place of the first
    swapped = {
        **by_index,
        0: other.model_copy(update={"sha256": profile.sha256, "count": len(chunks)}),
    }
    with pytest.raises(ConfigError, match="do not decode|sha256 mismatch|bytes reassembled"):
        reassemble(profile, swapped)
    lying = profile.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(ConfigError, match="sha256 mismatch"):
        reassemble(
            lying, {i: c.model_copy(update={"sha256": "0" * 64}) for i, c in by_index.items()}
        )


@pytest.mark.parametrize(
    ("own", "fleet", "replace", "decision"),
    [
        (None, None, False, "none"),
        ("a", None, False, "publish"),
        ("a", "a", False, "keep"),
        (None, "a", False, "adopt"),
        ("a", "b", False, "refuse"),
        ("a", "b", True, "replace"),
    ],
)
def test_adopt_keep_refuse_replace(
    tmp_path: Path, own: str | None, fleet: str | None, replace: bool, decision: str
) -> None:
    _files(tmp_path)
    configs = {
        "a": _local(tmp_path).config,
        "b": _local(tmp_path, energy_budget_j=5.0).config,
    }
    assert decide(configs.get(own or ""), configs.get(fleet or ""), replace) == decision


def _sync(folder: Path, own: LocalConfig | None, replace: bool = False) -> ConfigSync:
    return ConfigSync(own, replace, folder / "state", fetch_timeout_s=30.0)


def test_a_bare_controller_fetches_verifies_and_stores_before_it_may_lead(tmp_path: Path) -> None:
    _files(tmp_path)
    fleet = _local(tmp_path)
    sync = _sync(tmp_path, None)
    assert sync.problem is None  # no fleet configuration: a plain controller
    step = sync.on_config(fleet.config, now=0.0)
    assert step.ready is None and "adopting" in (step.report or "")
    assert sync.problem and sync.problem.startswith("fetching")
    chunks = [c for data in fleet.blobs.values() for c in chunks_of(data)]
    readies = [sync.on_chunk(c, now=1.0).ready for c in reversed(chunks)]
    ready = [r for r in readies if r is not None]
    assert len(ready) == 1 and sync.problem and sync.problem.startswith("loading")
    assert ready[0].profile.read_bytes() == fleet.blobs[fleet.config.profile.sha256]
    assert stored(tmp_path / "state", fleet.config.gate) == ready[0].gate
    assert sync.to_publish(leading=True) is None  # it holds nothing yet
    assert sync.installed(LocalConfig(fleet.config, fleet.blobs))
    assert sync.problem is None and sync.held_id == fleet.config.config_id
    assert sync.to_publish(leading=True) is None  # the fleet's already


def test_a_chunk_that_breaks_the_hash_installs_nothing_and_says_why(tmp_path: Path) -> None:
    _files(tmp_path)
    fleet = _local(tmp_path)
    sync = _sync(tmp_path, None)
    sync.on_config(fleet.config, now=0.0)
    gate = fleet.config.gate
    bad = ConfigChunk(sha256=gate.sha256, index=0, count=1, data=chunks_of(b"gate-weightz")[0].data)
    step = sync.on_chunk(bad, now=1.0)
    assert step.ready is None and "sha256 mismatch" in (step.report or "")
    assert sync.problem and "sha256 mismatch" in sync.problem
    assert stored(tmp_path / "state", gate) is None  # nothing half-installed
    assert not list((tmp_path / "state").glob("*.part"))
    # the right chunks, later: fetched after all
    for data in fleet.blobs.values():
        for chunk in chunks_of(data):
            last = sync.on_chunk(chunk, now=2.0)
    assert last.ready is not None


def test_a_blob_that_never_comes_is_reported_once_and_the_standby_stays(tmp_path: Path) -> None:
    _files(tmp_path)
    fleet = _local(tmp_path)
    sync = _sync(tmp_path, None)
    sync.on_config(fleet.config, now=0.0)
    for chunk in chunks_of(fleet.blobs[fleet.config.profile.sha256])[:-1]:
        sync.on_chunk(chunk, now=1.0)
    assert sync.tick(now=10.0).report is None
    late = sync.tick(now=31.0).report or ""
    assert "could not be fetched within 30 s" in late
    assert "1 of" in late and "gate.pt" in late and "no chunk came" in late
    assert sync.tick(now=60.0).report is None  # once
    status = ControllerStatus(
        controller_id="b", state="online", since_s=1.0, incarnation=1, version="t", time_s=2.0,
        agents_online=0, requests_answered=0, config_problem=sync.problem,
    )  # fmt: skip
    assert not should_lead(status, [])  # alone, and still not leading without it


def test_a_controller_with_another_configuration_refuses_unless_replacing(tmp_path: Path) -> None:
    _files(tmp_path)
    fleet = _local(tmp_path)
    mine = _local(tmp_path, energy_budget_j=2.0)
    sync = _sync(tmp_path, mine)
    assert sync.problem is None
    assert sync.to_publish(leading=False) is None
    assert sync.to_publish(leading=True) is mine  # the fleet has none: ours, when we lead
    step = sync.on_config(fleet.config, now=0.0)
    assert sync.problem and "refusing to lead" in sync.problem and step.report == sync.problem
    assert "--replace-config" in sync.problem and "energy 2 J" in sync.problem
    assert sync.to_publish(leading=True) is None

    replacing = _sync(tmp_path, mine, replace=True)
    replacing.on_config(fleet.config, now=0.0)
    assert replacing.problem is None
    assert replacing.to_publish(leading=False) is mine  # at once, even as a standby
    assert replacing.to_publish(leading=False) is None  # once
    replacing.on_config(mine.config, now=1.0)  # its echo
    assert replacing.problem is None


def test_a_standby_with_a_problem_is_no_candidate() -> None:
    def status(cid: str, since: float, **more: object) -> ControllerStatus:
        return ControllerStatus(
            controller_id=cid, state="online", since_s=since, incarnation=1, version="t",
            time_s=9.0, agents_online=0, requests_answered=0, **more,
        )  # fmt: skip

    older = status("a", 1.0, config_problem="started with another configuration")
    younger = status("b", 2.0)
    assert should_lead(younger, [older])  # the older one refuses: the younger leads
    assert not should_lead(older, [younger])
    active = status("a", 1.0, role="active", term=3, config_problem="fetching")
    assert not should_lead(active, [])  # an active one with a problem steps down


def test_fleet_config_is_strict() -> None:
    with pytest.raises(ValueError):
        FleetConfig.model_validate_json(b'{"config_id": "x"}')
    with pytest.raises(ValueError):
        ConfigChunk(sha256="A" * 64, index=0, count=1, data="")


def test_a_long_failure_still_fits_the_status(tmp_path: Path) -> None:
    _files(tmp_path)
    fleet = _local(tmp_path)
    sync = _sync(tmp_path, None)
    sync.on_config(fleet.config, now=0.0)
    said = sync.install_failed(fleet.config, "no expert fits: " + "e1@a1 costs 9 J; " * 1000)
    assert said.startswith("cannot adopt the fleet's configuration") and len(said) > 10_000
    assert sync.problem is not None and len(sync.problem) <= 4000
    ControllerStatus(
        controller_id="b", state="online", since_s=1.0, incarnation=1, version="t", time_s=2.0,
        agents_online=0, requests_answered=0, config_problem=sync.problem,
    )  # fmt: skip


def test_a_configuration_loaded_after_the_fleet_moved_on_is_not_put_in_force(
    tmp_path: Path,
) -> None:
    _files(tmp_path)
    first, second = _local(tmp_path), _local(tmp_path, top_k=1)
    sync = _sync(tmp_path, None)
    sync.on_config(first.config, now=0.0)
    chunks = [c for data in first.blobs.values() for c in chunks_of(data)]
    assert [r for r in (sync.on_chunk(c, now=1.0).ready for c in chunks) if r is not None]
    again = sync.on_config(second.config, now=2.0)  # same artefacts, stored: ready at once
    assert again.ready is not None and again.ready.config == second.config
    assert not sync.installed(first)  # too late: not the fleet's any more
    assert sync.install_failed(first.config, "whatever") is None
    assert sync.held_id is None and sync.problem and sync.problem.startswith("loading")
    assert sync.installed(second) and sync.held_id == second.config.config_id


def test_chunks_before_their_configuration_are_kept_and_a_forged_id_is_refused(
    tmp_path: Path,
) -> None:
    _files(tmp_path)
    fleet = _local(tmp_path)
    sync = _sync(tmp_path, None)
    for data in fleet.blobs.values():  # the publisher sends the chunks first
        for chunk in chunks_of(data):
            assert sync.on_chunk(chunk, now=0.0).ready is None
    step = sync.on_config(fleet.config, now=1.0)
    assert step.ready is not None and "adopting" in (step.report or "")

    forged = fleet.config.model_copy(
        update={"budgets": Budgets(energy_j=0.5), "config_id": "e" * 64}
    )
    other = _sync(tmp_path / "other", None)
    said = other.on_config(forged, now=0.0)
    assert said.ready is None and "not the hash of its content" in (said.report or "")
    assert other.problem and not should_lead(
        ControllerStatus(
            controller_id="b",
            state="online",
            since_s=1.0,
            incarnation=1,
            version="t",
            time_s=2.0,
            agents_online=0,
            requests_answered=0,
            config_problem=other.problem,
        ),  # fmt: skip
        [],
    )
    mine = _sync(tmp_path / "mine", _local(tmp_path, top_k=1))
    chunk = chunks_of(b"anything")[0]
    assert mine.on_chunk(chunk, now=0.0).ready is None and not mine._chunks  # never adopts
