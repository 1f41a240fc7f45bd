"""``moe2 cache-plan --fleet``: a caching instance from the live fleet, and applying a result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.caching.from_fleet import fleet_instance, fleet_view
from controller.registry import FleetRegistry
from messages import topics
from messages.base import now_s
from messages.bus import BrokerEndpoint
from messages.cache_plan import CachePlan
from messages.controller import FleetPlan
from moe2.client.fleet_reader import read_fleet, request_plan


def instance_from_fleet(
    endpoint: BrokerEndpoint,
    fleet: str,
    profile_path: Path,
    gate_path: Path,
    top_k: int,
    fallback_latency_s: float | None,
    wait_s: float = 2.5,
) -> tuple[dict[str, Any], FleetRegistry, list[str]]:
    """The instance, the fleet it was read from, and the experts left out (not on every agent).
    Raises ProfileError, GateError, FleetCachingError or ConnectionError."""
    from controller.selection.from_profile import load_gated_profile

    registry, _ = read_fleet(endpoint, fleet, wait_s)
    view = fleet_view(registry.agents())
    gated = load_gated_profile(profile_path, gate_path)
    gated.profile.check_fleet(fleet)
    instance = fleet_instance(
        view, gated.profile, gated.gate, gated.data, top_k, fallback_latency_s
    )
    return instance, registry, view.excluded


def cache_plan_message(
    placement: dict[str, list[list[Any]]], algorithm: str, latency_s: float
) -> CachePlan:
    """A solver result's placement (server -> [[layer, expert], ...]) as a CachePlan."""
    return CachePlan(
        placement={
            server: sorted({str(e) for _, e in pairs}) for server, pairs in placement.items()
        },
        expected_latency_s=latency_s,
        algorithm=algorithm,
        time_s=now_s(),
    )


def apply_cache_plan(
    endpoint: BrokerEndpoint, fleet: str, plan: CachePlan, wait_s: float = 15.0
) -> FleetPlan:
    """Publish the cache plan and wait for the controller's new fleet plan (or its refusal)."""
    return request_plan(endpoint, fleet, topics.CONTROLLER_CACHE_PLAN, plan, wait_s)


def plan_from_fleet(
    endpoint: BrokerEndpoint,
    fleet: str,
    profile_path: Path,
    gate_path: Path,
    top_k: int,
    fallback_latency_s: float | None,
    algorithm: str | None,
    seed: int,
) -> tuple[Any, list[str]]:
    """Solve the live fleet's caching instance: the result, and the experts left out."""
    from controller.caching import parse_instance, plan

    raw, _, excluded = instance_from_fleet(
        endpoint, fleet, profile_path, gate_path, top_k, fallback_latency_s
    )
    return plan(parse_instance(raw), algorithm, seed=seed), excluded
